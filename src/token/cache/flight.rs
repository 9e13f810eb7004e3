//! Fetches: one at a time, on a task of their own, shared by every waiter.

use std::{future::Future, pin::Pin, sync::Arc};

use tokio::{runtime::Handle, sync::watch};

use super::state::{Entry, Origin, Shared};
use crate::{
    error::{BoxError, TokenError, TokenErrorKind},
    token::{Token, TokenSource},
};

type FetchFuture = Pin<Box<dyn Future<Output = Result<Token, BoxError>> + Send>>;

/// A [`TokenSource`] with its types erased, so the cache (and the layer) need no type parameter.
pub(super) trait DynSource: Send + Sync {
    fn fetch(&self) -> FetchFuture;
}

impl<T: TokenSource> DynSource for T {
    fn fetch(&self) -> FetchFuture {
        let fetch = TokenSource::fetch(self);
        Box::pin(async move { fetch.await.map_err(Into::into) })
    }
}

/// What a fetch ends with, as its waiters see it; `None` while it runs.
pub(super) type FlightResult = Option<Result<Arc<Entry>, TokenError>>;

/// A running fetch, as seen by a waiter.
pub(crate) struct Flight {
    pub(super) rx: watch::Receiver<FlightResult>,
}

impl Flight {
    /// Waits for the fetch to finish.
    pub(crate) async fn wait(mut self) -> Result<Arc<Entry>, TokenError> {
        match self.rx.wait_for(Option::is_some).await {
            Ok(result) => result
                .clone()
                .expect("wait_for returns only a finished result"),
            // The task was dropped before it first ran (its runtime shut down).
            Err(_closed) => Err(TokenError::new(TokenErrorKind::Cancelled)),
        }
    }
}

impl Shared {
    pub(super) fn spawn_fetch(
        self: &Arc<Self>,
        control: &mut super::state::Control,
        origin: Origin,
    ) -> Result<watch::Receiver<FlightResult>, TokenError> {
        let runtime =
            Handle::try_current().map_err(|_| TokenError::new(TokenErrorKind::NoRuntime))?;
        let (tx, rx) = watch::channel(None);
        control.flight = Some(rx.clone());
        control.stats.fetches += 1;
        let shared = Arc::clone(self);
        runtime.spawn(async move {
            let mut guard = FlightGuard {
                shared,
                tx: Some(tx),
                origin,
            };
            let result = guard.shared.fetch().await;
            guard.finish(result);
        });
        Ok(rx)
    }

    /// One call to the source, bounded by the fetch timeout, checked for usability.
    async fn fetch(&self) -> Result<Token, TokenError> {
        let timeout = self.config.fetch_timeout;
        let token = match tokio::time::timeout(timeout, self.source.fetch()).await {
            Ok(Ok(token)) => token,
            Ok(Err(err)) => return Err(TokenError::from_source(err)),
            Err(_elapsed) => {
                return Err(TokenError::new(TokenErrorKind::Timeout { after: timeout }));
            }
        };
        token.check()?;
        Ok(token)
    }
}

/// Ends every fetch in `finish`: normally with its result, or, if the task is dropped first
/// (its runtime shut down) or the source panicked, with an error, so waiters never hang and a
/// new fetch can start.
struct FlightGuard {
    shared: Arc<Shared>,
    tx: Option<watch::Sender<FlightResult>>,
    origin: Origin,
}

impl FlightGuard {
    fn finish(&mut self, result: Result<Token, TokenError>) {
        if let Some(tx) = self.tx.take() {
            let outcome = self.shared.finish(result, self.origin);
            tx.send_replace(outcome);
        }
    }
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        if self.tx.is_some() {
            if std::thread::panicking() {
                // A panicking source is a failure like any other, with backoff.
                let err = TokenError::from_source("the token source panicked".into());
                self.finish(Err(err));
            } else {
                // Cancelled with its runtime: not the endpoint's fault, so no backoff. The next
                // caller re-decides on the slow path (a refresh ahead may be due again).
                let mut control = self.shared.lock();
                control.flight = None;
                self.shared.publish_check(&control);
                drop(control);
                if let Some(tx) = self.tx.take() {
                    tx.send_replace(Some(Err(TokenError::new(TokenErrorKind::Cancelled))));
                }
            }
        }
    }
}
