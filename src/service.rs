//! `BesenderAuth<S, M>`: waits for a token in `poll_ready`, stamps it in `call`; in the default
//! mode (`RetryOnce`) it also keeps what a retry needs. The `NoRetry` mode's `call` is in
//! `no_retry.rs`.

mod no_retry;

use std::{
    fmt,
    marker::PhantomData,
    sync::Arc,
    task::{Context, Poll, ready},
};

use http::{Request, Response, header::AUTHORIZATION};
use http_body::Body;
use tower_service::Service;

use crate::{
    error::{BoxError, Error, TokenError},
    future::{OnRefusal, ResponseFuture, Retry},
    kept_request::KeptRequest,
    layer::{AuthStats, Core, RetryOnce},
    replay::ReplayBody,
    token::cache::{Acquire, Lease, LeaseFuture, TokenCache},
};

/// The middleware made by [`BesenderAuthLayer`](crate::BesenderAuthLayer): authenticates each
/// request with a Besender access token and, in the default mode ([`RetryOnce`]), retries it
/// once if the server refuses the token.
///
/// - `poll_ready` first makes sure a token is at hand (waiting for a fetch if none is cached),
///   and only then polls the inner service, so no inner capacity (a `Buffer` slot, a concurrency
///   permit) is held while a token is fetched. If the token runs out after the inner service
///   was polled, that service may hold capacity already (even one it is still `Pending` for):
///   it is replaced by a fresh clone, which holds none, while the fresh token comes.
///   If no token can be had, it reports ready anyway and the next `call` fails with
///   [`Error::Token`](crate::Error::Token) without reaching the inner service (whose capacity
///   is given back the same way): to Tower, an error from `poll_ready` would mean the service
///   is dead.
/// - `call` sets `Authorization: Bearer <token>`, marked sensitive, replacing any value the
///   caller set, and sends the request.
/// - A refusal (see [`classify`](crate::classify)) invalidates exactly the refused token; in
///   the default mode the service then gets a fresh one and sends the request again, once, on
///   a fresh clone of the inner service, with the same method, URI, version, headers,
///   extensions and (replayed) body.
///
/// In the default mode, the inner service takes the caller's request with its body wrapped in
/// a [`ReplayBody`](crate::ReplayBody): a `BesenderAuth<S>` serves `Request<B>` when `S` serves
/// `Request<ReplayBody<B>>`. So a hyper-util client under the layer is built for that body type
/// (the compiler infers it where the client is built in place):
///
/// ```
/// use besender_auth::{BesenderAuth, ReplayBody};
/// use hyper_util::client::legacy::{Client, connect::HttpConnector};
///
/// // Serves `Request<axum::body::Body>`, for a proxy forwarding its inbound bodies.
/// type Upstream = BesenderAuth<Client<HttpConnector, ReplayBody<axum::body::Body>>>;
/// ```
///
/// `M` is the mode: [`RetryOnce`] (the default, whose future is a
/// [`ResponseFuture`](crate::ResponseFuture)), or [`NoRetry`](crate::NoRetry), made by
/// [`BesenderAuthLayer::without_retry`](crate::BesenderAuthLayer::without_retry), which never
/// retries and passes the caller's request on as it is: a `BesenderAuth<S, NoRetry>` serves
/// `Request<B>` when `S` does, with a [`NoRetryFuture`](crate::NoRetryFuture).
pub struct BesenderAuth<S, M = RetryOnce> {
    inner: S,
    core: Arc<Core<S>>,
    /// Where `poll_ready` is. A plain value, so that the per-request transitions are single
    /// stores with nothing to drop.
    phase: Phase,
    /// The token this service used last. While the cache still serves it, `poll_ready` reuses
    /// it after one atomic load, without looking anything up.
    lease: Option<Lease>,
    /// The fetch `Phase::Waiting` waits for, or the error `Phase::Failed` reports.
    slow: Option<Slow>,
    /// The inner service was polled since it was last called, so it may hold capacity (a
    /// permit, a `Buffer` slot, even one queued for while it said `Pending`), which must not
    /// stay held while this service waits for a token or fails a call for want of one.
    inner_polled: bool,
    mode: PhantomData<fn() -> M>,
}

/// Where `poll_ready` is in getting a token.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The next call needs a token.
    Idle,
    /// Waiting for the running fetch (`slow` holds it).
    Waiting,
    /// `lease` holds a token for the next call; the inner service is not ready yet.
    Leased,
    /// `lease` holds a token and the inner service said it is ready: `call` may send.
    Ready,
    /// No token could be had: the next call fails with the error in `slow`, without reaching
    /// the inner service. `poll_ready` reports ready (and asks again each time it is polled):
    /// to Tower an error from `poll_ready` means the service is dead (a `Buffer` or a balancer
    /// would discard it), and a token endpoint outage is not that.
    Failed,
}

/// What the rare phases hold.
enum Slow {
    Waiting(LeaseFuture),
    Failed(TokenError),
}

impl<S, M> BesenderAuth<S, M> {
    pub(crate) fn from_core(inner: S, core: Arc<Core<S>>) -> Self {
        Self {
            inner,
            core,
            phase: Phase::Idle,
            lease: None,
            slow: None,
            inner_polled: false,
            mode: PhantomData,
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably. Retries are cloned from a copy of the inner service made
    /// when the layer wrapped it, so changes made here are not seen by retries. Waiting for a
    /// token, or failing a call for want of one, after the inner service was polled replaces it
    /// with a fresh clone of that copy (see above), so changes made here may not last either.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, consuming the middleware.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// The token cache this service and its clones share (the layer's).
    pub fn cache(&self) -> &TokenCache {
        &self.core.cache
    }

    /// Counters of refusals and retries, as [`BesenderAuthLayer::stats`] reports them: for
    /// an application that keeps the service and not the layer.
    ///
    /// [`BesenderAuthLayer::stats`]: crate::BesenderAuthLayer::stats
    pub fn stats(&self) -> AuthStats {
        AuthStats::of(&self.core.cache)
    }
}

impl<S: Clone, M> Clone for BesenderAuth<S, M> {
    /// A clone shares the token cache; like any Tower service clone, it is not ready until
    /// polled.
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            core: Arc::clone(&self.core),
            phase: Phase::Idle,
            lease: self.lease.clone(),
            slow: None,
            inner_polled: false,
            mode: PhantomData,
        }
    }
}

impl<S: fmt::Debug, M> fmt::Debug for BesenderAuth<S, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.phase {
            Phase::Idle => "idle",
            Phase::Waiting => "waiting for a token",
            Phase::Leased => "token at hand, inner service not ready",
            Phase::Ready => "ready",
            Phase::Failed => "no token",
        };
        f.debug_struct("BesenderAuth")
            .field("mode", &crate::layer::mode_name::<M>())
            .field("inner", &self.inner)
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

impl<S, B, ResBody> Service<Request<B>> for BesenderAuth<S>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<ResBody>> + Clone,
    S::Error: Into<BoxError>,
    // `Unpin`: see `ReplayBody` (bound here, so that a body that is not says so at the call).
    B: Body + Send + Unpin + 'static,
{
    type Response = Response<ResBody>;
    type Error = Error;
    type Future = ResponseFuture<S::Future, S, B>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.poll_token_then_inner::<Request<ReplayBody<B>>>(cx)
    }

    #[inline]
    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let generation = match self.stamp(&mut request) {
            Ok(generation) => generation,
            Err(err) => return ResponseFuture::failed(err),
        };
        if !self.core.settings.retry {
            let future = self.inner.call(request.map(ReplayBody::passthrough));
            return ResponseFuture::unretried(future, self.core.on_refusal(generation));
        }
        // The copy kept for the retry leaves `Authorization` out: the retry sets a fresh one.
        let cap = self.core.settings.max_replay_bytes;
        let kept = match ReplayBody::fits(request.body(), cap) {
            true => KeptRequest::copy(&request),
            false => None,
        };
        let Some(kept) = kept else {
            let future = self.inner.call(request.map(ReplayBody::passthrough));
            let refusal = OnRefusal {
                unreplayable: true,
                ..self.core.on_refusal(generation)
            };
            return ResponseFuture::unretried(future, refusal);
        };
        let mut replay = None;
        let request = request.map(|body| {
            let (body, handle) = ReplayBody::first(body, kept, cap);
            replay = Some(handle);
            body
        });
        let replay = replay.expect("`Request::map` calls its closure");
        // The ready inner service serves this call; a retry, only when needed, is a fresh
        // clone of the layer's template (tower's clone rule).
        let retry = Retry::new(replay, generation, Arc::clone(&self.core));
        ResponseFuture::first(self.inner.call(request), retry)
    }
}

impl<S: Clone, M> BesenderAuth<S, M> {
    /// `poll_ready` for either mode: a token first, then the inner service's readiness for `R`.
    #[inline]
    fn poll_token_then_inner<R>(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>>
    where
        S: Service<R>,
        S::Error: Into<BoxError>,
    {
        // The token first: the inner service is not asked for capacity until we can use it.
        match self.phase {
            // `Leased` or `Ready`: the inner service, or the caller (a balancer polls its ready
            // services again before it calls one), may have kept us waiting for a long time.
            Phase::Idle | Phase::Leased | Phase::Ready if self.holds_usable_lease() => {}
            _ => match self.poll_token(cx) {
                Poll::Pending => {
                    self.release_inner();
                    return Poll::Pending;
                }
                Poll::Ready(false) => {
                    self.release_inner();
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(true) => {}
            },
        }
        self.inner_polled = true;
        match Service::<R>::poll_ready(&mut self.inner, cx) {
            Poll::Ready(Ok(())) => {
                self.phase = Phase::Ready;
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(err)) => {
                self.phase = Phase::Leased;
                Poll::Ready(Err(Error::inner(err)))
            }
            Poll::Pending => {
                self.phase = Phase::Leased;
                Poll::Pending
            }
        }
    }

    /// The start of `call` in either mode: stamps the token on `request` and returns its
    /// generation, or returns the error to fail the call with, without reaching the inner
    /// service.
    #[inline]
    fn stamp<B>(&mut self, request: &mut Request<B>) -> Result<u64, Error> {
        if self.phase != Phase::Ready {
            self.release_inner();
            return Err(self.unready_error());
        }
        self.phase = Phase::Idle;
        // The caller may have kept us waiting since `poll_ready` (a `Buffer`'s worker, a
        // balancer's ready set): use the cache's token if this one is no longer usable, and
        // never send one known to be dead.
        if !self.holds_usable_lease() {
            if let Err(err) = self.renew_lease() {
                self.release_inner();
                return Err(Error::Token(err));
            }
        }
        self.inner_polled = false;
        let lease = self.lease.as_ref().expect("Ready means a lease is held");
        request
            .headers_mut()
            .insert(AUTHORIZATION, lease.header.clone());
        Ok(lease.generation)
    }

    /// Gives back whatever capacity the inner service may hold, if it was polled since its last
    /// call: this service is about to wait for a token, or to fail a call without reaching it.
    /// Tower has no way to cancel a reservation but dropping the service that holds it (a
    /// `ConcurrencyLimit`'s permit, a `Buffer`'s slot, or an acquire they queued that was
    /// granted while this service looked elsewhere), so the inner service is replaced by a
    /// fresh clone, which holds nothing until it is polled.
    #[cold]
    fn release_inner(&mut self) {
        if std::mem::take(&mut self.inner_polled) {
            // Not `self.inner.clone()`: a clone of a ready service may claim its readiness.
            self.inner = self.core.fresh_service();
        }
    }
}

impl<S, M> BesenderAuth<S, M> {
    /// Whether the token this service used last may be used for the next request: still the
    /// cache's, and not run out while no timer could say so (see `TokenCache::is_usable`).
    #[inline]
    fn holds_usable_lease(&self) -> bool {
        self.lease
            .as_ref()
            .is_some_and(|lease| self.core.cache.is_usable(lease))
    }

    /// Gets a token, or waits for one. `Ready(true)`: `lease` holds it (phase `Leased`);
    /// `Ready(false)`: none can be had (phase `Failed`).
    #[cold]
    fn poll_token(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        if self.phase != Phase::Waiting && self.holds_usable_lease() {
            self.slow = None;
            self.phase = Phase::Leased;
            return Poll::Ready(true);
        }
        let acquired = match (self.phase, self.slow.as_mut()) {
            (Phase::Waiting, Some(Slow::Waiting(wait))) => match ready!(wait.as_mut().poll(cx)) {
                Ok(lease) => Acquire::Ready(lease),
                // The fetch may have failed long before this poll (a `Buffer` polls its service
                // again only for its next request): its error may be stale by now.
                Err(_) => self.core.cache.acquire_after_failure(),
            },
            _ => self.core.cache.acquire(),
        };
        let fresh = match acquired {
            Acquire::Ready(lease) => Ok(lease),
            Acquire::Failed(err) => Err(err),
            Acquire::Pending(mut wait) => match wait.as_mut().poll(cx) {
                Poll::Ready(fresh) => fresh,
                Poll::Pending => {
                    self.slow = Some(Slow::Waiting(wait));
                    self.phase = Phase::Waiting;
                    return Poll::Pending;
                }
            },
        };
        match fresh {
            Ok(lease) => {
                self.lease = Some(lease);
                self.slow = None;
                self.phase = Phase::Leased;
                Poll::Ready(true)
            }
            Err(err) => {
                self.slow = Some(Slow::Failed(err));
                self.phase = Phase::Failed;
                Poll::Ready(false)
            }
        }
    }

    /// The held token is no longer usable since `poll_ready`: take the cache's, or keep the held
    /// one while its time is not up (see `TokenCache::renew`).
    #[cold]
    fn renew_lease(&mut self) -> Result<(), TokenError> {
        let held = self.lease.as_ref().expect("Ready means a lease is held");
        if let Some(fresh) = self.core.cache.renew(held)? {
            self.lease = Some(fresh);
        }
        Ok(())
    }

    /// `call` without a successful `poll_ready`: the token error it reported, or a Tower
    /// contract breach (no `poll_ready`, or it was not `Ready(Ok)`). Calling the inner service
    /// unready could make it panic (a `Buffer` does): nothing is sent.
    #[cold]
    fn unready_error(&mut self) -> Error {
        if self.phase == Phase::Failed {
            self.phase = Phase::Idle;
            if let Some(Slow::Failed(err)) = self.slow.take() {
                return Error::Token(err);
            }
        }
        Error::NotReady
    }
}
