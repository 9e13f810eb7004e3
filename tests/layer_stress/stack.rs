//! A scenario's stack, from the bottom: the mock API, the middlewares drawn for under the
//! layer, the tap, the layer, the middlewares drawn for above it. And the end-of-scenario
//! probe that every permit and slot in it is free again.
//!
//! The layer is a `BesenderAuthLayer` (retry on or off), whose service hands its inner service
//! a `Request<ReplayBody<StressBody>>`, or a `BesenderAuthLayer<NoRetry>`, whose service hands
//! on the caller's `Request<StressBody>`. The tap, right under the layer, takes either and boxes
//! the body, so that everything under it is the same in every mode.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use besender_auth::{AuthStats, BesenderAuthLayer, NoRetry, TokenCache};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use tokio::sync::watch;
use tower::{
    BoxError, Layer, Service, ServiceExt, buffer::Buffer, limit::ConcurrencyLimit,
    timeout::Timeout, util::BoxCloneService,
};

use crate::{
    body::StressBody, ledger::Ledger, mock_api::MockApi, run::wait_until, scenario::Wrap, tap::Tap,
};

/// A request body as the tap passes it down: the layer's, boxed.
pub type ApiBody = UnsyncBoxBody<Bytes, BoxError>;
pub type InnerRequest = Request<ApiBody>;
pub type InnerService = BoxCloneService<InnerRequest, Response<()>, BoxError>;
pub type OuterService = BoxCloneService<Request<StressBody>, Response<()>, BoxError>;

/// The layer, in the scenario's retry mode: its two types serve different requests.
pub enum AuthLayer {
    /// Retry on or off (`BesenderAuthLayer::retry`).
    Retry(BesenderAuthLayer),
    /// `BesenderAuthLayer::without_retry`.
    NoRetry(BesenderAuthLayer<NoRetry>),
}

impl AuthLayer {
    /// The layer's service over `tap`, erased.
    fn layer(&self, tap: Tap) -> OuterService {
        fn erased<S>(auth: S) -> OuterService
        where
            S: Service<Request<StressBody>, Response = Response<()>, Error = besender_auth::Error>,
            S: Clone + Send + 'static,
            S::Future: Send,
        {
            OuterService::new(auth.map_err(BoxError::from))
        }
        match self {
            AuthLayer::Retry(layer) => erased(layer.layer(tap)),
            AuthLayer::NoRetry(layer) => erased(layer.layer(tap)),
        }
    }

    pub fn cache(&self) -> &TokenCache {
        match self {
            AuthLayer::Retry(layer) => layer.cache(),
            AuthLayer::NoRetry(layer) => layer.cache(),
        }
    }

    pub fn stats(&self) -> AuthStats {
        match self {
            AuthLayer::Retry(layer) => layer.stats(),
            AuthLayer::NoRetry(layer) => layer.stats(),
        }
    }
}

/// How many clones of a level the probe makes ready at once when nothing under it limits them.
const UNLIMITED: usize = 6;

pub struct Stack {
    /// What the callers clone.
    pub outer: OuterService,
    /// Every level from the bottom up, kept unpolled for the probe.
    levels: Vec<Level>,
}

struct Level {
    name: String,
    /// How many of its clones can be ready at once: its own limit, or that of the levels
    /// under it that its readiness waits for.
    capacity: usize,
    handle: Handle,
}

#[derive(Clone)]
enum Handle {
    Inner(InnerService),
    Outer(OuterService),
}

impl Handle {
    async fn ready(self) -> Result<Handle, BoxError> {
        Ok(match self {
            Handle::Inner(s) => Handle::Inner(s.ready_oneshot().await?),
            Handle::Outer(s) => Handle::Outer(s.ready_oneshot().await?),
        })
    }
}

impl Stack {
    /// Builds the stack; `tap` wraps what is under the layer. On a runtime: a `Buffer` spawns
    /// its worker.
    pub fn build(
        inner: &[Wrap],
        outer: &[Wrap],
        layer: &AuthLayer,
        api: MockApi,
        tap: impl FnOnce(InnerService) -> Tap,
    ) -> Self {
        let mut levels = Vec::new();
        let mut level = |name: String, capacity, handle| {
            levels.push(Level {
                name,
                capacity,
                handle,
            })
        };
        let (mut service, mut capacity) = (InnerService::new(api), UNLIMITED);
        for wrap in inner.iter().rev() {
            (service, capacity) = wrapped(*wrap, service, capacity);
            let handle = Handle::Inner(service.clone());
            level(format!("{wrap:?} under the layer"), capacity, handle);
        }
        let mut service = layer.layer(tap(service));
        level("the layer".into(), capacity, Handle::Outer(service.clone()));
        for wrap in outer.iter().rev() {
            (service, capacity) = wrapped(*wrap, service, capacity);
            let handle = Handle::Outer(service.clone());
            level(format!("{wrap:?} above the layer"), capacity, handle);
        }
        Stack {
            outer: service,
            levels,
        }
    }

    /// With nothing in flight, a fresh clone of the stack is ready at once (within `bound`,
    /// time for a token if one must be fetched), as many at once as its capacity.
    pub async fn probe_top(&self, ledger: &Arc<Ledger>, bound: Duration) {
        let top = self.levels.last().expect("the layer is a level");
        probe(top, ledger, bound).await;
    }

    /// The same for every level, from the bottom up: a permit or a `Buffer` slot still held
    /// by anyone shows at the lowest level holding it. A `Buffer`'s worker keeps what its
    /// service reserved for a request that was cancelled until its next request (Tower's
    /// way), so this comes after a request went through every worker.
    pub async fn probe_every_level(&self, ledger: &Arc<Ledger>, bound: Duration) {
        for level in &self.levels {
            probe(level, ledger, bound).await;
        }
    }
}

/// Gets as many clones of `level` ready at once as it has capacity, within `bound`.
async fn probe(level: &Level, ledger: &Arc<Ledger>, bound: Duration) {
    let ready = Arc::new(AtomicUsize::new(0));
    let (release, released) = watch::channel(false);
    let holders: Vec<_> = (0..level.capacity)
        .map(|_| {
            let handle = level.handle.clone();
            let (ready, mut released) = (Arc::clone(&ready), released.clone());
            let (ledger, name) = (Arc::clone(ledger), level.name.clone());
            tokio::spawn(async move {
                match handle.ready().await {
                    Ok(held) => {
                        ready.fetch_add(1, Ordering::SeqCst);
                        let _ = released.wait_for(|r| *r).await;
                        drop(held);
                    }
                    Err(err) => ledger.violation(format!("{name} failed poll_ready: {err}")),
                }
            })
        })
        .collect();
    let all_ready = || ready.load(Ordering::SeqCst) == level.capacity;
    wait_until(bound, bound / 1000, all_ready).await;
    let got = ready.load(Ordering::SeqCst);
    if got < level.capacity {
        ledger.violation(format!(
            "with nothing in flight, only {got} of {} clones of {} got ready at once within \
             {bound:?}: a permit or slot is still held",
            level.capacity, level.name
        ));
    }
    let _ = release.send(true);
    for holder in holders {
        // Those still waiting for readiness give up; the others let go of it.
        holder.abort();
        let _ = holder.await;
    }
}

/// `service` under `wrap`, and the capacity of the result.
fn wrapped<R: Send + 'static>(
    wrap: Wrap,
    service: BoxCloneService<R, Response<()>, BoxError>,
    capacity: usize,
) -> (BoxCloneService<R, Response<()>, BoxError>, usize) {
    match wrap {
        Wrap::Buffer(bound) => (BoxCloneService::new(Buffer::new(service, bound)), bound),
        Wrap::Limit(max) => (
            BoxCloneService::new(ConcurrencyLimit::new(service, max)),
            capacity.min(max),
        ),
        Wrap::Timeout(after) => (BoxCloneService::new(Timeout::new(service, after)), capacity),
    }
}
