//! `BesenderAuth<S>`: waits for a token in `poll_ready`, stamps it in `call`.

use std::{
    fmt, mem,
    sync::Arc,
    task::{Context, Poll},
};

use http::{Request, Response, header::AUTHORIZATION};
use http_body::Body;
use tower_service::Service;

use crate::{
    error::{BoxError, Error},
    future::{ResponseFuture, Retry},
    layer::Core,
    replay::ReplayBody,
    token::cache::{Acquire, Lease, LeaseFuture},
};

/// The middleware made by [`BesenderAuthLayer`](crate::BesenderAuthLayer): authenticates each
/// request with a Besender access token and retries it once if the server refuses the token.
///
/// - `poll_ready` first makes sure a token is at hand (waiting for a fetch if none is cached),
///   and only then polls the inner service, so no inner capacity (a `Buffer` slot, a concurrency
///   permit) is held while a token is fetched.
/// - `call` sets `Authorization: Bearer <token>`, marked sensitive, replacing any value the
///   caller set, and sends the request.
/// - A refusal (see [`classify`](crate::classify)) invalidates exactly the refused token, gets a
///   fresh one and sends the request again, once, on a fresh clone of the inner service, with
///   the same method, URI, version, headers, extensions and (replayed) body.
pub struct BesenderAuth<S> {
    inner: S,
    core: Arc<Core>,
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
    /// `lease` holds a token for the next call; the inner service may not be ready yet.
    Leased,
}

impl<S> BesenderAuth<S> {
    pub(crate) fn from_core(inner: S, core: Arc<Core>) -> Self {
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

    /// The inner service, mutably.
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
            Readiness::Leased => "token at hand",
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
                Readiness::Leased => break,
                Readiness::Idle if self.lease.as_ref().is_some_and(|l| cache.is_current(l)) => {
                    self.state = Readiness::Leased;
                }
                Readiness::Idle => match cache.acquire() {
                    Acquire::Ready(lease) => {
                        self.lease = Some(lease);
                        self.state = Readiness::Leased;
                    }
                    Acquire::Failed(err) => return Poll::Ready(Err(Error::Token(err))),
                    Acquire::Pending(wait) => self.state = Readiness::Waiting(wait),
                },
                Readiness::Waiting(wait) => match wait.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(lease)) => {
                        self.lease = Some(lease);
                        self.state = Readiness::Leased;
                    }
                    Poll::Ready(Err(err)) => {
                        self.state = Readiness::Idle;
                        return Poll::Ready(Err(Error::Token(err)));
                    }
                },
            }
        }
        self.inner.poll_ready(cx).map_err(Error::inner)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let lease = match mem::replace(&mut self.state, Readiness::Idle) {
            Readiness::Leased => self.lease.clone().expect("Leased means a lease is held"),
            other => {
                // A Tower contract breach; serve it if a token is cached, without waiting.
                self.state = other;
                match self.core.cache.try_lease() {
                    Some(lease) => lease,
                    None => return ResponseFuture::failed(Error::NotReady),
                }
            }
        };
        let (mut parts, body) = request.into_parts();
        parts.headers.insert(AUTHORIZATION, lease.header.clone());

        let body = if self.core.retry {
            let (body, replay) = ReplayBody::replayable(&parts, body, self.core.max_replay_bytes);
            if let Some(replay) = replay {
                // The inner service was made ready for this call; the retry gets a fresh clone
                // and makes it ready itself (tower's clone rule).
                let retry = Retry::new(self.inner.clone(), replay, lease, Arc::clone(&self.core));
                let future = self.inner.call(Request::from_parts(parts, body));
                return ResponseFuture::first(future, retry);
            }
            body
        } else {
            ReplayBody::passthrough(body)
        };
        let future = self.inner.call(Request::from_parts(parts, body));
        ResponseFuture::unretried(future, lease.generation, Arc::clone(&self.core))
    }
}
