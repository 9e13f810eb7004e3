//! `ReplayBody`: a request body that can be sent twice, for one retry.
//!
//! The first attempt streams the caller's body as usual; as its frames pass through they are kept
//! (as `Bytes`, so nothing is copied) up to a cap. If the server refuses the token, the retry
//! replays the kept frames, then streams whatever the first attempt had not read yet, then the
//! trailers. Past the cap the kept frames are freed and replay is refused; a body whose size hint
//! already exceeds the cap is never buffered at all, and a body known to be empty needs no buffer.
//!
//! # Shared state
//! The two attempts share one [`BodyState`]: the kept frames, the trailers, and the unread rest of
//! the caller's body. Exactly one attempt holds it at a time: an attempt takes it on its first
//! poll (so polling needs no lock per frame) and puts it back when dropped. A retry is only made
//! once the first attempt has put it back ([`Replay::take`]); if the first attempt still holds
//! it (a server that answered before reading the whole body), the retry waits for it, bounded by
//! a timeout, and otherwise the original response is returned. A body polled while the other
//! attempt holds the state yields an error rather than a panic or a corrupt stream.

use std::{
    fmt,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll},
};

use bytes::{Buf, Bytes};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::Notify;

use crate::error::BoxError;

/// A request body that the layer can replay once.
///
/// The first attempt streams the caller's body as usual; as its frames pass through they are
/// kept (as `Bytes`, so nothing is copied) up to a cap (64 KiB by default). A retry replays the
/// kept frames, then streams whatever the first attempt had not read yet, then the trailers.
/// Past the cap the kept frames are freed and the refusal is returned instead of a retry; a body
/// whose size hint already exceeds the cap is never buffered. If the server answered before the
/// first attempt finished sending, the retry waits (bounded) for the first attempt to let go of
/// the body; it never polls a body the other attempt still holds.
///
/// This is the body type the inner service receives. Its data is `Bytes` and its error a
/// [`BoxError`], so it fits hyper-util's client and, through `tonic::body::Body::new` or
/// `axum::body::Body::new`, tonic and axum.
pub struct ReplayBody<B> {
    kind: Kind<B>,
}

enum Kind<B> {
    /// Not replayable (retry off, or larger than the cap): the body, unchanged but for `Bytes`.
    Passthrough(B),
    /// A body known to be empty, on either attempt.
    Empty,
    /// One attempt of a replayable body.
    Attempt(Attempt<B>),
}

struct Attempt<B> {
    shared: Arc<Shared<B>>,
    /// Held while this attempt streams; returned to `shared` on drop.
    state: Option<BodyState<B>>,
    /// Frames of `state.kept` this attempt has already sent.
    sent_frames: usize,
    sent_trailers: bool,
    /// Only the first attempt keeps frames; nothing follows the retry.
    keeps_frames: bool,
    hint: SizeHint,
}

struct Shared<B> {
    state: Mutex<Option<BodyState<B>>>,
    /// Signalled when an attempt puts the state back.
    released: Notify,
    cap: usize,
}

struct BodyState<B> {
    kept: Vec<Bytes>,
    kept_len: usize,
    trailers: Option<HeaderMap>,
    /// The caller's body, from where the first attempt stopped; `None` once it ended.
    rest: Option<B>,
    /// Passed the cap: `kept` was freed and replay is impossible.
    over_cap: bool,
    /// The caller's body failed: replay is impossible.
    failed: bool,
}

/// The retry's handle on a replayable body.
pub(crate) struct Replay<B> {
    /// `None` for a body known to be empty: there is nothing to share.
    shared: Option<Arc<Shared<B>>>,
    hint: SizeHint,
}

/// What [`Replay::take`] found.
pub(crate) enum Take<B> {
    /// The body for the retry.
    Ready(ReplayBody<B>),
    /// The first attempt still holds the body.
    Held,
    /// The body cannot be replayed (over the cap, or it failed).
    Refused,
}

impl<B: Body> ReplayBody<B> {
    /// The body as is, for a request that will not be retried.
    pub(crate) fn passthrough(body: B) -> Self {
        Self {
            kind: Kind::Passthrough(body),
        }
    }

    /// Wraps `body` for a first attempt that may be replayed once, keeping up to `cap` bytes.
    /// Returns no [`Replay`] when the body's size hint already exceeds `cap`.
    pub(crate) fn replayable(body: B, cap: usize) -> (Self, Option<Replay<B>>) {
        if body.is_end_stream() {
            let replay = Replay {
                shared: None,
                hint: SizeHint::with_exact(0),
            };
            return (Self { kind: Kind::Empty }, Some(replay));
        }
        let hint = body.size_hint();
        if hint.lower() > cap as u64 {
            tracing::trace!(lower = hint.lower(), cap, "body larger than the replay cap");
            return (Self::passthrough(body), None);
        }
        let shared = Arc::new(Shared {
            state: Mutex::new(None),
            released: Notify::new(),
            cap,
        });
        let first = Attempt {
            shared: Arc::clone(&shared),
            state: Some(BodyState {
                kept: Vec::new(),
                kept_len: 0,
                trailers: None,
                rest: Some(body),
                over_cap: false,
                failed: false,
            }),
            sent_frames: 0,
            sent_trailers: false,
            keeps_frames: true,
            hint,
        };
        let replay = Replay {
            shared: Some(shared),
            hint,
        };
        (
            Self {
                kind: Kind::Attempt(first),
            },
            Some(replay),
        )
    }
}

impl<B> Shared<B> {
    fn lock(&self) -> MutexGuard<'_, Option<BodyState<B>>> {
        // Nothing panics while the lock is held; a poisoned lock still guards valid state.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<B> Replay<B> {
    /// The body for the retry, if the first attempt has let go of it and it can be replayed.
    pub(crate) fn take(&self) -> Take<B> {
        let Some(shared) = &self.shared else {
            return Take::Ready(ReplayBody { kind: Kind::Empty });
        };
        let mut guard = shared.lock();
        match guard.as_ref() {
            None => Take::Held,
            Some(state) if state.over_cap || state.failed => Take::Refused,
            Some(_) => {
                let state = guard.take();
                Take::Ready(ReplayBody {
                    kind: Kind::Attempt(Attempt {
                        shared: Arc::clone(shared),
                        state,
                        sent_frames: 0,
                        sent_trailers: false,
                        keeps_frames: false,
                        hint: self.hint,
                    }),
                })
            }
        }
    }

    /// Resolves once an attempt has put the body back (at once if it did so since the last
    /// wait: the signal is a stored permit).
    pub(crate) fn released(&self) -> impl std::future::Future<Output = ()> + Send + 'static
    where
        B: Send + 'static,
    {
        let shared = self.shared.clone();
        async move {
            if let Some(shared) = shared {
                shared.released.notified().await;
            }
        }
    }
}

impl<B> Drop for Attempt<B> {
    fn drop(&mut self) {
        if let Some(state) = self.state.take() {
            *self.shared.lock() = Some(state);
            // A stored permit, so a retry that checks and then waits cannot miss it.
            self.shared.released.notify_one();
        }
    }
}

impl<B> Body for ReplayBody<B>
where
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.get_mut().kind {
            Kind::Empty => Poll::Ready(None),
            Kind::Passthrough(body) => Pin::new(body)
                .poll_frame(cx)
                .map(|frame| frame.map(|f| f.map(|f| f.map_data(into_bytes)).map_err(Into::into))),
            Kind::Attempt(attempt) => attempt.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Empty => true,
            Kind::Passthrough(body) => body.is_end_stream(),
            Kind::Attempt(attempt) => attempt.state.as_ref().is_some_and(|state| {
                state.rest.is_none()
                    && (state.over_cap || attempt.sent_frames >= state.kept.len())
                    && (attempt.sent_trailers || state.trailers.is_none())
            }),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Empty => SizeHint::with_exact(0),
            Kind::Passthrough(body) => body.size_hint(),
            Kind::Attempt(attempt) => attempt.size_hint(),
        }
    }
}

fn into_bytes<D: Buf>(mut data: D) -> Bytes {
    // Zero-copy when `D` is `Bytes`.
    data.copy_to_bytes(data.remaining())
}

impl<B> Attempt<B>
where
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.state.is_none() {
            self.state = self.shared.lock().take();
        }
        let Some(state) = self.state.as_mut() else {
            // Only reachable if a body is polled while the other attempt streams it; the layer
            // never does that, but a broken inner service must get an error, not a panic.
            return Poll::Ready(Some(Err(
                "the request body is still held by the previous attempt".into(),
            )));
        };
        // Replay what the first attempt sent.
        if !state.over_cap && self.sent_frames < state.kept.len() {
            let chunk = state.kept[self.sent_frames].clone();
            self.sent_frames += 1;
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if state.over_cap && !self.keeps_frames {
            return Poll::Ready(Some(Err(
                "the request body can no longer be replayed".into()
            )));
        }
        // Then the rest of the caller's body.
        loop {
            let state = self.state.as_mut().expect("held above");
            let Some(rest) = state.rest.as_mut() else {
                break;
            };
            let frame = match Pin::new(rest).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    state.rest = None;
                    break;
                }
                Poll::Ready(Some(Err(err))) => {
                    state.failed = true;
                    return Poll::Ready(Some(Err(err.into())));
                }
                Poll::Ready(Some(Ok(frame))) => frame,
            };
            match frame.into_data() {
                Ok(data) => {
                    let chunk = into_bytes(data);
                    if self.keeps_frames {
                        self.keep(chunk.clone());
                    }
                    return Poll::Ready(Some(Ok(Frame::data(chunk))));
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        state.trailers = Some(trailers.clone());
                        self.sent_trailers = true;
                        return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                    }
                    // Neither data nor trailers: not part of http-body 1.0; skip it.
                }
            }
        }
        let state = self.state.as_ref().expect("held above");
        if !self.sent_trailers {
            if let Some(trailers) = &state.trailers {
                self.sent_trailers = true;
                return Poll::Ready(Some(Ok(Frame::trailers(trailers.clone()))));
            }
        }
        Poll::Ready(None)
    }

    /// Keeps a frame the first attempt sends, or gives up on replay past the cap.
    fn keep(&mut self, chunk: Bytes) {
        let cap = self.shared.cap;
        let state = self.state.as_mut().expect("only called while held");
        if state.over_cap {
            return;
        }
        if state.kept_len + chunk.len() > cap {
            tracing::trace!(cap, "request body passed the replay cap; replay refused");
            state.over_cap = true;
            state.kept = Vec::new();
            state.kept_len = 0;
            return;
        }
        state.kept_len += chunk.len();
        state.kept.push(chunk);
        self.sent_frames = state.kept.len();
    }

    fn size_hint(&self) -> SizeHint {
        let Some(state) = &self.state else {
            return self.hint;
        };
        let unsent: u64 = state.kept[self.sent_frames.min(state.kept.len())..]
            .iter()
            .map(|c| c.len() as u64)
            .sum();
        match &state.rest {
            None => SizeHint::with_exact(unsent),
            Some(rest) => {
                let rest = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower() + unsent);
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper + unsent);
                }
                hint
            }
        }
    }
}

impl<B> fmt::Debug for ReplayBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Passthrough(_) => "passthrough",
            Kind::Empty => "empty",
            Kind::Attempt(a) if a.keeps_frames => "first attempt",
            Kind::Attempt(_) => "replay",
        };
        f.debug_struct("ReplayBody").field("kind", &kind).finish()
    }
}

#[cfg(test)]
mod tests;
