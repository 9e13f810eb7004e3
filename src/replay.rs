//! `ReplayBody`: a request body that can be sent twice, for one retry.
//!
//! The first attempt streams the caller's body as usual; as its frames pass through they are kept
//! (as `Bytes`, so nothing is copied) up to a cap. If the server refuses the token, the retry
//! replays the kept frames, then streams whatever the first attempt had not read yet, then the
//! trailers. Past the cap the kept frames are freed and replay is refused; a body whose size hint
//! already exceeds the cap is never buffered at all, and a body known to be empty needs no buffer.
//!
//! # Shared state
//! A [`Replay`] (held by the response future) and the attempt bodies share one allocation: the
//! retry's copy of the request head ([`RequestHead`]), and a [`BodyState`] behind a lock: the kept frames, the
//! trailers, and the unread rest of the caller's body. At most one attempt streams at a time:
//! `in_use` is set while an attempt body exists, and cleared when it is dropped, with a wake-up
//! if a retry announced (`retry_waiting`) that it waits for it. Both flags are `SeqCst`, so
//! either the retry sees the body released or the dropping attempt sees the retry waiting.
//! The retry's body is only made once the first attempt's body is gone ([`Replay::take`]); if
//! the server answered before the first attempt finished sending, the retry waits for it,
//! bounded, and otherwise the original response is returned. Polling is therefore never
//! contended; the lock is taken per frame because that costs far less than the frame's I/O and
//! keeps every attempt body small.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
};

use bytes::{Buf, Bytes};
use http::{HeaderMap, request::Parts};
use http_body::{Body, Frame, SizeHint};
use tokio::sync::Notify;

use crate::{error::BoxError, head::RequestHead};

/// A request body that the layer can replay once.
///
/// The first attempt streams the caller's body as usual; as its frames pass through they are
/// kept (as `Bytes`, so nothing is copied) up to a cap (64 KiB by default). A retry replays the
/// kept frames, then streams whatever the first attempt had not read yet, then the trailers.
/// Past the cap the kept frames are freed and the refusal is returned instead of a retry; a body
/// whose size hint already exceeds the cap is never buffered. If the server answered before the
/// first attempt finished sending, the retry waits (bounded) for the first attempt to let go of
/// the body; two attempts never stream it at once.
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
    /// Frames of `kept` this attempt has sent.
    sent_frames: usize,
    sent_trailers: bool,
    /// Only the first attempt keeps frames; nothing follows the retry.
    keeps_frames: bool,
}

struct Shared<B> {
    /// The request head for the retry (its `Authorization` is replaced then).
    head: RequestHead,
    cap: usize,
    empty: bool,
    body: Mutex<BodyState<B>>,
    /// An attempt body exists.
    in_use: AtomicBool,
    /// A retry waits for `released`.
    retry_waiting: AtomicBool,
    /// Signalled when an attempt body is dropped while a retry waits.
    released: Notify,
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

/// The copy of a request head that [`ReplayBody::replayable`] keeps for the retry.
pub(crate) struct ReplayHead {
    head: RequestHead,
    empty: bool,
}

/// The retry's handle on a replayable request: its head and its body.
pub(crate) struct Replay<B> {
    shared: Arc<Shared<B>>,
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

    /// What a first attempt that may be replayed once needs from the request head `parts`: a
    /// copy, taken before the body is wrapped. `None` when the body's size hint already
    /// exceeds `cap` (or the head cannot be encoded): the request is then not replayable.
    pub(crate) fn replay_head(parts: &Parts, body: &B, cap: usize) -> Option<ReplayHead> {
        let empty = body.is_end_stream();
        let lower = body.size_hint().lower();
        if !empty && lower > cap as u64 {
            tracing::trace!(lower, cap, "not replayable: the body is over the cap");
            return None;
        }
        Some(ReplayHead {
            head: RequestHead::copy(parts)?,
            empty,
        })
    }

    /// Wraps `body` for a first attempt that may be replayed once, keeping up to `cap` bytes.
    ///
    /// Takes the body alone: taking and returning the whole request cost two more copies of a
    /// 250-byte struct, each right behind the last (in the per-call profile, the largest single
    /// cost of a retryable call).
    pub(crate) fn replayable(head: ReplayHead, body: B, cap: usize) -> (Self, Replay<B>) {
        let ReplayHead { head, empty } = head;
        let shared = Arc::new(Shared {
            head,
            cap,
            empty,
            body: Mutex::new(BodyState {
                kept: Vec::new(),
                kept_len: 0,
                trailers: None,
                rest: (!empty).then_some(body),
                over_cap: false,
                failed: false,
            }),
            in_use: AtomicBool::new(!empty),
            retry_waiting: AtomicBool::new(false),
            released: Notify::new(),
        });
        let first = if empty {
            Kind::Empty
        } else {
            Kind::Attempt(Attempt {
                shared: Arc::clone(&shared),
                sent_frames: 0,
                sent_trailers: false,
                keeps_frames: true,
            })
        };
        (Self { kind: first }, Replay { shared })
    }
}

impl<B> Shared<B> {
    fn lock(&self) -> MutexGuard<'_, BodyState<B>> {
        // Every critical section leaves the state consistent before it can panic (a panicking
        // inner body included), so a poisoned lock still guards valid state.
        self.body.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<B> Replay<B> {
    /// The request head to send again.
    pub(crate) fn head(&self) -> &RequestHead {
        &self.shared.head
    }

    /// The body for the retry, if the first attempt has let go of it and it can be replayed.
    pub(crate) fn take(&self) -> Take<B> {
        if self.shared.empty {
            return Take::Ready(ReplayBody { kind: Kind::Empty });
        }
        let state = self.shared.lock();
        if state.over_cap || state.failed {
            return Take::Refused;
        }
        if self.shared.in_use.swap(true, Ordering::SeqCst) {
            return Take::Held;
        }
        drop(state);
        Take::Ready(ReplayBody {
            kind: Kind::Attempt(Attempt {
                shared: Arc::clone(&self.shared),
                sent_frames: 0,
                sent_trailers: false,
                keeps_frames: false,
            }),
        })
    }

    /// Announces that the retry waits for the first attempt's body (after [`take`](Self::take)
    /// said `Held`), and resolves once it has been dropped: at once if it was dropped in
    /// between, since the future re-checks `in_use` before each wait.
    pub(crate) fn released(&self) -> impl Future<Output = ()> + Send + 'static
    where
        B: Send + 'static,
    {
        self.shared.retry_waiting.store(true, Ordering::SeqCst);
        let shared = Arc::clone(&self.shared);
        async move {
            while shared.in_use.load(Ordering::SeqCst) {
                shared.released.notified().await;
            }
        }
    }
}

impl<B> Drop for Attempt<B> {
    fn drop(&mut self) {
        self.shared.in_use.store(false, Ordering::SeqCst);
        // Nearly always nobody waits: then no wake-up is owed.
        if self.shared.retry_waiting.load(Ordering::SeqCst) {
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
            Kind::Passthrough(body) => Pin::new(body).poll_frame(cx).map(|frame| {
                frame.map(|frame| frame.map(|f| f.map_data(into_bytes)).map_err(Into::into))
            }),
            Kind::Attempt(attempt) => attempt.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Empty => true,
            Kind::Passthrough(body) => body.is_end_stream(),
            Kind::Attempt(attempt) => {
                let state = attempt.shared.lock();
                state.rest.as_ref().is_none_or(Body::is_end_stream)
                    && (state.over_cap || attempt.sent_frames >= state.kept.len())
                    && (attempt.sent_trailers || state.trailers.is_none())
            }
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
        let shared = &*self.shared;
        let mut state = shared.lock();
        // Replay what the first attempt sent.
        if !state.over_cap && self.sent_frames < state.kept.len() {
            let chunk = state.kept[self.sent_frames].clone();
            self.sent_frames += 1;
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if state.over_cap && !self.keeps_frames {
            // `Replay::take` refuses such a body; never send a truncated one.
            return Poll::Ready(Some(Err(
                "the request body can no longer be replayed".into()
            )));
        }
        // Then the rest of the caller's body.
        while let Some(rest) = state.rest.as_mut() {
            let frame = match Pin::new(&mut *rest).poll_frame(cx) {
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
            if rest.is_end_stream() {
                // Report the end with this frame, not one poll later: HTTP/2 then sets
                // END_STREAM on this DATA frame instead of sending an empty one after it.
                state.rest = None;
            }
            match frame.into_data() {
                Ok(data) => {
                    let chunk = into_bytes(data);
                    // Once the response future is gone (it holds the other reference), no
                    // retry can come: stop keeping frames, and free those kept.
                    if self.keeps_frames && Arc::strong_count(&self.shared) == 1 {
                        self.keeps_frames = false;
                        state.over_cap = true;
                        state.kept = Vec::new();
                        state.kept_len = 0;
                    }
                    if self.keeps_frames && keep(&mut state, shared.cap, &chunk) {
                        self.sent_frames = state.kept.len();
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
        if !self.sent_trailers {
            if let Some(trailers) = &state.trailers {
                self.sent_trailers = true;
                return Poll::Ready(Some(Ok(Frame::trailers(trailers.clone()))));
            }
        }
        Poll::Ready(None)
    }

    fn size_hint(&self) -> SizeHint {
        let state = self.shared.lock();
        let unsent: u64 = state
            .kept
            .get(self.sent_frames..)
            .unwrap_or_default()
            .iter()
            .map(|c| c.len() as u64)
            .sum();
        match &state.rest {
            None => SizeHint::with_exact(unsent),
            Some(rest) => {
                let rest = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower().saturating_add(unsent));
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper.saturating_add(unsent));
                }
                hint
            }
        }
    }
}

/// Keeps a frame the first attempt sends, or gives up on replay past the cap. Returns whether
/// the frame was kept.
fn keep<B>(state: &mut BodyState<B>, cap: usize, chunk: &Bytes) -> bool {
    if state.over_cap {
        return false;
    }
    if state.kept_len + chunk.len() > cap {
        tracing::trace!(cap, "request body passed the replay cap; replay refused");
        state.over_cap = true;
        state.kept = Vec::new();
        state.kept_len = 0;
        return false;
    }
    state.kept_len += chunk.len();
    state.kept.push(chunk.clone());
    true
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
