//! `BesenderAuthLayer`: the layer and its options.

use std::{
    fmt,
    marker::PhantomData,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use http::{HeaderMap, StatusCode};
use tower_layer::Layer;

use crate::{
    BesenderAuth,
    classify::{Classifier, ClassifyRefusal},
    future::OnRefusal,
    token::{TokenCache, TokenSource},
};

const DEFAULT_MAX_REPLAY_BYTES: usize = 64 * 1024;
const DEFAULT_REPLAY_WAIT: Duration = Duration::from_secs(1);
const DEFAULT_RETRY_READY_WAIT: Duration = Duration::from_secs(30);

/// Authenticates every request of the wrapped service with a Besender access token.
///
/// See the [crate documentation](crate) for what it does and a complete example. Clones of the
/// layer, and of every service it makes, share one [`TokenCache`].
///
/// `M` says what a refusal leads to: [`RetryOnce`] (the default) or, after
/// [`without_retry`](Self::without_retry), [`NoRetry`].
pub struct BesenderAuthLayer<M = RetryOnce> {
    cache: TokenCache,
    settings: Settings,
    mode: PhantomData<fn() -> M>,
}

/// The layer's settings, copied into the `Core` of every service it makes.
#[derive(Clone)]
pub(crate) struct Settings {
    pub(crate) retry: bool,
    pub(crate) max_replay_bytes: usize,
    pub(crate) replay_wait: Duration,
    pub(crate) retry_ready_wait: Duration,
    pub(crate) classifier: Classifier,
}

/// The default mode of [`BesenderAuthLayer`] and [`BesenderAuth`]: a refused request is sent
/// again, once, with a fresh token. The inner service receives the body wrapped in a
/// [`ReplayBody`](crate::ReplayBody), so that it can be sent twice.
#[derive(Debug, Clone, Copy, Default)]
pub struct RetryOnce;

/// The mode of a layer made with [`BesenderAuthLayer::without_retry`]: a refusal invalidates
/// the refused token, so the next request gets a fresh one, and is returned to the caller as it
/// is. The inner service receives the caller's request unchanged but for its `Authorization`
/// header: no body is wrapped or kept, and a tonic `Channel` can be used as it is.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoRetry;

impl<M> Clone for BesenderAuthLayer<M> {
    fn clone(&self) -> Self {
        Self {
            cache: self.cache.clone(),
            settings: self.settings.clone(),
            mode: PhantomData,
        }
    }
}

/// What a service and its clones share: one allocation, referenced by each response future.
pub(crate) struct Core<S> {
    pub(crate) cache: TokenCache,
    pub(crate) settings: Settings,
    /// A clone of the inner service as the layer received it, never polled, that retries and
    /// services giving back capacity (`BesenderAuth::release_inner`) are cloned from. Never
    /// polled, because a clone of a ready service may say it is ready without being so
    /// (`tower::steer::Steer` copies its readiness), and calling it would then panic. Cloning
    /// the inner service for every request in case it is refused (hyper-util's client: four
    /// shared reference counts, bounced between cores) cost ~12% of HTTP/1.1 throughput;
    /// cloning this only when needed costs nothing on the way.
    pub(crate) template: Mutex<S>,
}

impl<S> Core<S> {
    /// What a response future needs to invalidate the token with this generation if the
    /// response refuses it: no reference count with the default classifier.
    #[inline]
    pub(crate) fn on_refusal(&self, generation: u64) -> OnRefusal {
        OnRefusal {
            classifier: self.settings.classifier.clone(),
            cache_id: self.cache.id(),
            generation,
            unreplayable: false,
        }
    }
}

impl<S: Clone> Core<S> {
    /// A fresh, never-polled clone of the inner service.
    pub(crate) fn fresh_service(&self) -> S {
        // Cloning cannot leave the service half-changed: a poisoned lock still holds a service.
        let template = self.template.lock().unwrap_or_else(|p| p.into_inner());
        template.clone()
    }
}

/// What the layer's services have done so far; from [`BesenderAuthLayer::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct AuthStats {
    /// Responses classified as a refusal of the token.
    pub refusals: u64,
    /// Requests sent again with a fresh token.
    pub retries: u64,
    /// Retries whose response was not a refusal.
    pub successful_retries: u64,
    /// Refusals not retried because the request could not be sent again: the body over the
    /// cap, failed, or still held by the first attempt past the wait, or the retry's service
    /// failed or was not ready within `retry_ready_wait`.
    pub refused_replays: u64,
    /// Refusals not retried because no different token could be had (the refresh returned the
    /// same token, was rate-limited, or failed).
    pub not_retried_no_new_token: u64,
}

impl BesenderAuthLayer {
    /// A layer over `source` with the defaults: a [`TokenCache`] with its defaults, one retry on
    /// refusal, request bodies replayable up to 64 KiB.
    pub fn new(source: impl TokenSource) -> Self {
        Self::from_cache(TokenCache::new(source))
    }

    /// A layer over an existing cache, for a cache with custom settings or one shared with other
    /// layers.
    pub fn from_cache(cache: TokenCache) -> Self {
        Self {
            cache,
            settings: Settings {
                retry: true,
                max_replay_bytes: DEFAULT_MAX_REPLAY_BYTES,
                replay_wait: DEFAULT_REPLAY_WAIT,
                retry_ready_wait: DEFAULT_RETRY_READY_WAIT,
                classifier: Classifier::Default,
            },
            mode: PhantomData,
        }
    }

    /// Whether a refused request is retried once with a fresh token. Default `true`. Without it,
    /// a refusal still invalidates the token, so the next request gets a fresh one, and bodies
    /// are never buffered.
    ///
    /// The service keeps its type either way, and its inner service still receives a
    /// [`ReplayBody`](crate::ReplayBody) (a pass-through): for a switch read from
    /// configuration. [`without_retry`](Self::without_retry) makes a lighter service instead.
    pub fn retry(mut self, retry: bool) -> Self {
        self.settings.retry = retry;
        self
    }

    /// A layer whose services never retry: a refusal invalidates the refused token, so the next
    /// request gets a fresh one, and reaches the caller as it is. Its services pass the
    /// caller's request on unchanged but for the `Authorization` header, so the inner service
    /// serves the caller's body type (`Request<B>`, not `Request<ReplayBody<B>>`), and cost
    /// about what a static header does (see the README's benchmarks).
    ///
    /// ```
    /// use besender_auth::{BesenderAuth, BesenderAuthLayer, NoRetry, Token};
    /// use bytes::Bytes;
    /// use http_body_util::Full;
    /// use hyper_util::client::legacy::{Client, connect::HttpConnector};
    /// use hyper_util::rt::TokioExecutor;
    /// use tower::Layer;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    /// let layer = BesenderAuthLayer::new(Token::bearer_static("abc")).without_retry();
    /// // The client is built for the caller's own body type.
    /// let _service: BesenderAuth<Client<HttpConnector, Full<Bytes>>, NoRetry> = layer.layer(client);
    /// # }
    /// ```
    pub fn without_retry(self) -> BesenderAuthLayer<NoRetry> {
        BesenderAuthLayer {
            cache: self.cache,
            settings: Settings {
                retry: false,
                ..self.settings
            },
            mode: PhantomData,
        }
    }

    /// The most request-body bytes kept for a retry. Default 64 KiB, as linkerd's. A body
    /// declared larger is not buffered at all; one that grows past it is freed and its refusal
    /// is returned as is.
    pub fn max_replay_bytes(mut self, limit: usize) -> Self {
        self.settings.max_replay_bytes = limit;
        self
    }

    /// How long a retry waits for the first attempt to let go of the request body, when the
    /// server answered before reading all of it. Default 1 s; past it the refusal is returned.
    /// A body whole in memory (an `http_body_util::Full<Bytes>`, or an empty body) never waits:
    /// each attempt has its own handle on its bytes.
    /// A response future polled outside any Tokio runtime has no timer to wait on: it returns
    /// the refusal at once.
    pub fn replay_wait(mut self, wait: Duration) -> Self {
        self.settings.replay_wait = wait.min(crate::MAX_TOKEN_LIFETIME);
        self
    }

    /// How long a retry waits for its fresh clone of the inner service to be ready. Default
    /// 30 s; past it the refusal is returned (counted in
    /// [`AuthStats::refused_replays`]). The retry needs capacity of its own (a permit of a
    /// `ConcurrencyLimit` below the layer): this bounds the wait when that capacity never
    /// comes, as when a `Buffer` above the layer reserved the last permit for a request whose
    /// caller then gave up (its worker keeps the permit until its next request). Like
    /// [`replay_wait`](Self::replay_wait), it needs a Tokio runtime's timer: outside one, a
    /// clone that is not ready at once gives the refusal back.
    pub fn retry_ready_wait(mut self, wait: Duration) -> Self {
        self.settings.retry_ready_wait = wait.min(crate::MAX_TOKEN_LIFETIME);
        self
    }
}

impl<M> BesenderAuthLayer<M> {
    /// How refusals are recognized. Default: [`DefaultClassifier`](crate::DefaultClassifier).
    /// For a closure, [`classify_with`](Self::classify_with) spares annotating its arguments.
    pub fn classifier(mut self, classifier: impl ClassifyRefusal) -> Self {
        self.settings.classifier = Classifier::Custom(Arc::new(classifier));
        self
    }

    /// [`classifier`](Self::classifier) for a closure, whose argument types are then inferred
    /// (through `classifier`'s trait bound, Rust cannot infer that the headers are borrowed for
    /// any lifetime, and an unannotated `|status, headers| ..` does not compile).
    ///
    /// ```
    /// use besender_auth::{BesenderAuthLayer, Token};
    /// use http::StatusCode;
    ///
    /// // An API that answers 403 to expired tokens.
    /// let layer = BesenderAuthLayer::new(Token::bearer_static("abc"))
    ///     .classify_with(|status, _headers| status == StatusCode::FORBIDDEN);
    /// ```
    pub fn classify_with<F>(self, classify: F) -> Self
    where
        F: Fn(StatusCode, &HeaderMap) -> bool + Send + Sync + 'static,
    {
        self.classifier(classify)
    }

    /// The token cache the layer's services share.
    pub fn cache(&self) -> &TokenCache {
        &self.cache
    }

    /// Counters of refusals and retries, over every service that uses this layer's token cache
    /// (this layer's, its clones', and those of layers made with the same cache).
    pub fn stats(&self) -> AuthStats {
        AuthStats::of(&self.cache)
    }
}

impl AuthStats {
    /// The counters of the services using `cache`.
    pub(crate) fn of(cache: &TokenCache) -> Self {
        let c = cache.refusals();
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        AuthStats {
            refusals: get(&c.refusals),
            retries: get(&c.retries),
            successful_retries: get(&c.successful_retries),
            refused_replays: get(&c.refused_replays),
            not_retried_no_new_token: get(&c.no_new_token),
        }
    }
}

impl<S: Clone, M> Layer<S> for BesenderAuthLayer<M> {
    type Service = BesenderAuth<S, M>;

    fn layer(&self, inner: S) -> Self::Service {
        let template = Mutex::new(inner.clone());
        BesenderAuth::from_core(
            inner,
            Arc::new(Core {
                cache: self.cache.clone(),
                settings: self.settings.clone(),
                template,
            }),
        )
    }
}

impl<M> fmt::Debug for BesenderAuthLayer<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BesenderAuthLayer")
            .field("mode", &mode_name::<M>())
            .field("cache", &self.cache)
            .field("retry", &self.settings.retry)
            .field("max_replay_bytes", &self.settings.max_replay_bytes)
            .field("replay_wait", &self.settings.replay_wait)
            .field("retry_ready_wait", &self.settings.retry_ready_wait)
            .finish_non_exhaustive()
    }
}

/// The mode's own name (`RetryOnce`, `NoRetry`), for `Debug`.
pub(crate) fn mode_name<M>() -> &'static str {
    let path = std::any::type_name::<M>();
    path.rsplit("::").next().unwrap_or(path)
}
