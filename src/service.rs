//! `BesenderAuth<S>`: waits for a token in `poll_ready`, stamps it in `call`.

use std::{
    fmt, mem,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use http::{Request, Response, header::AUTHORIZATION};
use http_body::Body;
use tower_service::Service;

use crate::{
    error::{BoxError, Error, TokenError},
    future::{OnRefusal, ResponseFuture, Retry},
    layer::Core,
    replay::ReplayBody,
    token::cache::{Acquire, Lease, LeaseFuture},
};

/// The middleware made by [`BesenderAuthLayer`](crate::BesenderAuthLayer): authenticates each
/// request with a Besender access token and retries it once if the server refuses the token.
///
/// - `poll_ready` first makes sure a token is at hand (waiting for a fetch if none is cached),
///   and only then polls the inner service, so no inner capacity (a `Buffer` slot, a concurrency
///   permit) is held while a token is fetched. If no token can be had, it reports ready anyway
///   and the next `call` fails with [`Error::Token`](crate::Error::Token) without reaching the
///   inner service: to Tower, an error from `poll_ready` would mean the service is dead.
/// - `call` sets `Authorization: Bearer <token>`, marked sensitive, replacing any value the
///   caller set, and sends the request.
/// - A refusal (see [`classify`](crate::classify)) invalidates exactly the refused token, gets a
///   fresh one and sends the request again, once, on a fresh clone of the inner service, with
///   the same method, URI, version, headers, extensions and (replayed) body.
pub struct BesenderAuth<S> {
    inner: S,
    core: Arc<Core<S>>,
    state: Readiness,
    /// The token this service used last. While the cache still serves it, `poll_ready` reuses
    /// it after one atomic load, without looking anything up.
    lease: Option<Lease>,
}

/// Where `poll_ready` is in getting a token.
enum Readiness {
    /// The next call needs a token.
    Idle,
    /// Waiting for the running fetch.
    Waiting(LeaseFuture),
    /// `lease` holds a token for the next call; the inner service is not ready yet.
    Leased,
    /// `lease` holds a token and the inner service said it is ready: `call` may send.
    Ready,
    /// No token could be had: the next call fails with this error, without reaching the inner
    /// service. `poll_ready` reports ready (and asks again each time it is polled): to Tower an
    /// error from `poll_ready` means the service is dead (a `Buffer` or a balancer would discard
    /// it), and a token endpoint outage is not that.
    Failed(TokenError),
}

impl<S> BesenderAuth<S> {
    pub(crate) fn from_core(inner: S, core: Arc<Core<S>>) -> Self {
        Self {
            inner,
            core,
            state: Readiness::Idle,
            lease: None,
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably. Retries are cloned from a copy of the inner service made on
    /// the first retryable call, so changes made here after that are not seen by retries.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, consuming the middleware.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone> Clone for BesenderAuth<S> {
    /// A clone shares the token cache; like any Tower service clone, it is not ready until
    /// polled.
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            core: Arc::clone(&self.core),
            state: Readiness::Idle,
            lease: self.lease.clone(),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for BesenderAuth<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            Readiness::Idle => "idle",
            Readiness::Waiting(_) => "waiting for a token",
            Readiness::Leased => "token at hand, inner service not ready",
            Readiness::Ready => "ready",
            Readiness::Failed(_) => "no token",
        };
        f.debug_struct("BesenderAuth")
            .field("inner", &self.inner)
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

impl<S, B, ResBody> Service<Request<B>> for BesenderAuth<S>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<ResBody>> + Clone,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = Error;
    type Future = ResponseFuture<S::Future, S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        // The token first: the inner service is not asked for capacity until we can use it.
        let cache = &self.core.cache;
        loop {
            match &mut self.state {
                Readiness::Leased | Readiness::Ready => break,
                Readiness::Idle | Readiness::Failed(_) => {
                    if self.lease.as_ref().is_some_and(|l| cache.is_current(l)) {
                        self.state = Readiness::Leased;
                        continue;
                    }
                    match cache.acquire() {
                        Acquire::Ready(lease) => {
                            self.lease = Some(lease);
                            self.state = Readiness::Leased;
                        }
                        Acquire::Failed(err) => {
                            self.state = Readiness::Failed(err);
                            return Poll::Ready(Ok(()));
                        }
                        Acquire::Pending(wait) => self.state = Readiness::Waiting(wait),
                    }
                }
                Readiness::Waiting(wait) => match wait.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(lease)) => {
                        self.lease = Some(lease);
                        self.state = Readiness::Leased;
                    }
                    Poll::Ready(Err(err)) => {
                        self.state = Readiness::Failed(err);
                        return Poll::Ready(Ok(()));
                    }
                },
            }
        }
        match self.inner.poll_ready(cx) {
            Poll::Ready(Ok(())) => {
                self.state = Readiness::Ready;
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(err)) => {
                self.state = Readiness::Leased;
                Poll::Ready(Err(Error::inner(err)))
            }
            Poll::Pending => {
                self.state = Readiness::Leased;
                Poll::Pending
            }
        }
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let cache = &self.core.cache;
        let lease = if let Readiness::Ready = self.state {
            self.state = Readiness::Idle;
            // The inner service may have kept us waiting since the token was leased: use the
            // cache's current token if this one is no longer it.
            let held = self.lease.as_ref().expect("Ready means a lease is held");
            if cache.is_current(held) {
                held.clone()
            } else {
                let fresh = cache.try_lease().unwrap_or_else(|| held.clone());
                self.lease = Some(fresh.clone());
                fresh
            }
        } else if let Readiness::Failed(_) = self.state {
            let Readiness::Failed(err) = mem::replace(&mut self.state, Readiness::Idle) else {
                unreachable!("matched above")
            };
            return ResponseFuture::failed(Error::Token(err));
        } else {
            // A Tower contract breach (no `poll_ready`, or it was not `Ready(Ok)`). Calling the
            // inner service unready could make it panic (a `Buffer` does): not sent.
            return ResponseFuture::failed(Error::NotReady);
        };
        request
            .headers_mut()
            .insert(AUTHORIZATION, lease.header.clone());
        let request = if self.core.retry {
            match ReplayBody::replayable(request, self.core.max_replay_bytes) {
                (request, Some(replay)) => {
                    // Retries are cloned, only when needed, from a clone of the inner service
                    // made once; the ready inner service serves this call (tower's clone rule).
                    let inner = &self.inner;
                    self.core.template.get_or_init(|| Mutex::new(inner.clone()));
                    let retry = Retry::new(replay, lease, Arc::clone(&self.core));
                    return ResponseFuture::first(self.inner.call(request), retry);
                }
                (request, None) => request,
            }
        } else {
            request.map(ReplayBody::passthrough)
        };
        let future = self.inner.call(request);
        let refusal = OnRefusal {
            classifier: self.core.classifier.clone(),
            cache_id: self.core.cache.id(),
            generation: lease.generation,
        };
        ResponseFuture::unretried(future, refusal)
    }
}
