//! `ReplayBody`: a request body that can be sent twice, for one retry.
//!
//! The first attempt streams the caller's body as usual; as its frames pass through they are kept
//! (as `Bytes`, so nothing is copied) up to a cap. If the server refuses the token, the retry
//! replays the kept frames, then streams whatever the first attempt had not read yet, then the
//! trailers. Past the cap the kept frames are freed and replay is refused; a body whose size hint
//! already exceeds the cap is never buffered at all.
//!
//! # Bodies whole in memory
//! A body known to be empty, and an `http_body_util::Full<Bytes>` (the usual request body of a
//! hyper-util client, recognised by its type), are whole in memory when they are wrapped: the
//! `Full`'s one frame is taken out at once, and each attempt gets its own handle on the bytes
//! (`Kind::Whole`; the retry's is kept in the [`KeptRequest`] with the head). Nothing is shared
//! between the attempts, so there is no lock and no allocation of its own, and a retry never
//! waits for the first attempt to let go of the body: an early refusal is retried at once.
//! Every other body takes the streamed path below.
//!
//! # Shared state (streamed bodies)
//! A [`Replay`] (held by the response future) and the attempt bodies share one allocation: the
//! [`KeptRequest`] (a pointer to the retry's copy of the request head, in a box reused from
//! request to request), and a [`BodyState`] behind a lock: the kept frames, the trailers, and
//! the unread rest of the caller's body.
//!
//! The first attempt streams the caller's body from that state, under the lock, and keeps its
//! frames there. The lock is uncontended (the retry reads the state only once the first attempt
//! is gone), and it keeps the attempt body two words: a client moves the body it is given
//! through several futures, and inline state made every one of those moves, and the boxed
//! futures holding them, larger. Before its first poll the body reports the size hint recorded
//! when it was wrapped, without the lock. Past the cap, or when the caller's body fails, it
//! also raises `gave_up`, so a refused request returns at once instead of waiting for it to end.
//!
//! At most one attempt streams at a time: `in_use` is set while an attempt body exists, and
//! cleared when it is dropped, with a wake-up if a retry announced
//! (`retry_waiting`) that it waits for it. Both flags are `SeqCst`, so either the retry sees the
//! body released or the dropping attempt sees the retry waiting. The retry's body is only made
//! once the first attempt's body is gone ([`Replay::take`]); if the server answered before the
//! first attempt finished sending, the retry waits for it, bounded, and otherwise the original
//! response is returned. The retry reads the shared state under the lock, frame by frame: it is
//! the rare path.

use std::{
    any::Any,
    fmt,
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, Waker},
};

use bytes::{Buf, Bytes};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use tokio::sync::Notify;

use self::{
    attempts::{First, RetryAttempt},
    kept::Kept,
};
use crate::{error::BoxError, kept_request::KeptRequest};

/// A request body that the layer can replay once.
///
/// The first attempt streams the caller's body as usual; as its frames pass through they are
/// kept (as `Bytes`, so nothing is copied) up to a cap (64 KiB by default). A retry replays the
/// kept frames, then streams whatever the first attempt had not read yet, then the trailers.
/// Past the cap the kept frames are freed and the refusal is returned instead of a retry; a body
/// whose size hint already exceeds the cap is never buffered. If the server answered before the
/// first attempt finished sending, the retry waits (bounded) for the first attempt to let go of
/// the body; two attempts never stream it at once. The exception is a body whole in memory
/// from the start: an `http_body_util::Full<Bytes>` (matched by its type: a boxed `Full`, or a
/// `Full` of another buffer type, is streamed) or a body known to be empty. Each attempt then
/// gets its own handle on the bytes, so the retry never waits, and may be sent while the first
/// attempt is still sending its own copy.
///
/// This is the body type the inner service receives. Its data is `Bytes` and its error a
/// [`BoxError`], so it fits hyper-util's client and, through `tonic::body::Body::new` or
/// `axum::body::Body::new`, tonic and axum.
///
/// The caller's body must be `Unpin`, as hyper-util's client requires of its own: the first
/// attempt and the retry read it from state they share, where it cannot be pinned in place.
/// Bodies from hyper, axum, tonic and `http-body-util` are; for one that is not (a
/// `StreamBody` over an `async` stream), send `Box::pin(body)` or
/// `BodyExt::boxed_unsync(body)`, which are.
pub struct ReplayBody<B> {
    kind: Kind<B>,
}

enum Kind<B> {
    /// Not replayable (retry off, or larger than the cap): the body, unchanged but for `Bytes`.
    Passthrough(B),
    /// A body whole in memory (see [`whole`]), or known to be empty, on either attempt: its
    /// data, until sent. Each attempt has its own handle on the bytes, so the retry never
    /// waits for the first attempt to let go of the body.
    Whole(Option<Bytes>),
    /// The first attempt of a replayable body.
    First(First<B>),
    /// The retry: the kept frames, then the rest of the caller's body.
    Retry(RetryAttempt<B>),
}

pub(crate) struct Shared<B> {
    /// The request head for the retry (its `Authorization` is replaced then).
    kept: KeptRequest,
    cap: usize,
    /// The caller's body declared its exact size when it was wrapped. A retry reports an exact
    /// size only then: a client frames the body by its size hint (HTTP/1.1 `content-length`
    /// or chunked, HTTP/2 `content-length`), and the retry must go out as the first attempt
    /// did, trailers included (length framing has no room for them).
    exact_size: bool,
    /// The caller's body's size hint when it was wrapped: the first attempt's until it reads.
    hint: SizeHint,
    body: Mutex<BodyState<B>>,
    /// An attempt body exists.
    in_use: AtomicBool,
    /// The first attempt stopped keeping frames (past the cap, or the body failed): a retry
    /// need not wait for it.
    gave_up: AtomicBool,
    /// A retry waits for `released`.
    retry_waiting: AtomicBool,
    /// Signalled when an attempt body is dropped while a retry waits.
    released: Notify,
}

struct BodyState<B> {
    kept: Kept,
    /// Boxed: most bodies have none, and the shared state is moved into place once per request.
    trailers: Option<Box<HeaderMap>>,
    /// The caller's body, from where the first attempt stopped; `None` once it ended.
    rest: Option<B>,
    /// Passed the cap: `kept` was freed and replay is impossible.
    over_cap: bool,
    /// The caller's body failed: replay is impossible.
    failed: bool,
    /// The first attempt's client polled the body: it framed the request as having one.
    first_polled: bool,
}

/// The retry's handle on a replayable request: its head and its body.
pub(crate) enum Replay<B> {
    /// A body the first attempt streams, keeping its frames in the shared state.
    Streamed(Arc<Shared<B>>),
    /// A body whole in memory, kept with the head: the first attempt shares nothing with the
    /// retry.
    Whole(KeptRequest),
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

impl<B> ReplayBody<B> {
    /// `body` as it is, kept for no replay: for sending a request through the same inner
    /// service without the layer (a proxy reusing the client, and its connection pool, for
    /// requests that need no token), or for testing an inner service on its own.
    ///
    /// ```
    /// use besender_auth::ReplayBody;
    /// use bytes::Bytes;
    /// use http_body_util::Full;
    ///
    /// let body = ReplayBody::new(Full::new(Bytes::from_static(b"{}")));
    /// let request = http::Request::post("http://127.0.0.1/health").body(body).unwrap();
    /// # drop(request);
    /// ```
    pub fn new(body: B) -> Self {
        Self::passthrough(body)
    }

    /// The body as is, for a request that will not be retried.
    pub(crate) fn passthrough(body: B) -> Self {
        Self {
            kind: Kind::Passthrough(body),
        }
    }
}

impl<B> From<B> for ReplayBody<B> {
    /// [`ReplayBody::new`].
    fn from(body: B) -> Self {
        Self::new(body)
    }
}

impl<B: Body> ReplayBody<B> {
    /// Whether `body` may be kept for a replay: its size hint does not already exceed `cap`.
    #[inline]
    pub(crate) fn fits(body: &B, cap: usize) -> bool {
        let lower = body.size_hint().lower();
        if lower > cap as u64 && !body.is_end_stream() {
            over_cap(lower, cap);
            return false;
        }
        true
    }

    /// Wraps `body` (which [`fits`](Self::fits) `cap`) for a first attempt that may be
    /// replayed once, keeping up to `cap` bytes, with `kept`, the copy of the request head for
    /// the retry. For a streamed body, the first attempt's body and the retry's handle share
    /// one allocation; a body whole in memory shares nothing, and its data is kept with the
    /// head.
    ///
    /// The caller wraps the body with `Request::map`, so that the request is moved once on its
    /// way to the inner service, as with retry off.
    #[inline]
    pub(crate) fn first(mut body: B, mut kept: KeptRequest, cap: usize) -> (Self, Replay<B>)
    where
        B: 'static,
    {
        if let Some(data) = whole(&mut body) {
            let kind = Kind::Whole(data.clone());
            kept.keep(data);
            return (Self { kind }, Replay::Whole(kept));
        }
        Self::first_streamed(body, kept, cap)
    }

    /// [`first`](Self::first) for a body that is not whole in memory.
    fn first_streamed(body: B, kept: KeptRequest, cap: usize) -> (Self, Replay<B>) {
        let hint = body.size_hint();
        let shared = Arc::new(Shared {
            kept,
            cap,
            exact_size: hint.exact().is_some(),
            hint,
            body: Mutex::new(BodyState {
                kept: Kept::default(),
                trailers: None,
                rest: Some(body),
                over_cap: false,
                failed: false,
                first_polled: false,
            }),
            in_use: AtomicBool::new(true),
            gave_up: AtomicBool::new(false),
            retry_waiting: AtomicBool::new(false),
            released: Notify::new(),
        });
        let first = Kind::First(First::new(Arc::clone(&shared)));
        (Self { kind: first }, Replay::Streamed(shared))
    }
}

/// Says why a body is not kept (out of line: [`ReplayBody::fits`] runs on every request).
#[cold]
fn over_cap(lower: u64, cap: usize) {
    tracing::trace!(lower, cap, "not replayable: the body is over the cap");
}

/// The data of a body that is whole in memory, taken out of it: `Some(None)` for a body known
/// to be empty, `Some(Some(data))` for an `http_body_util::Full<Bytes>` (the usual request body
/// of a hyper-util client), whose one frame is ready at once; `None` for any other body, which
/// is streamed and kept as it goes. Such a body needs no state shared between the attempts: no
/// lock, and no wait for the first attempt to let go of it before a retry.
fn whole<B: Body + 'static>(body: &mut B) -> Option<Option<Bytes>> {
    if body.is_end_stream() {
        return Some(None);
    }
    let full = (body as &mut dyn Any).downcast_mut::<Full<Bytes>>()?;
    // A `Full` answers its first poll at once, with its data; it has no other kind of frame,
    // and no error.
    let mut cx = Context::from_waker(Waker::noop());
    match Pin::new(full).poll_frame(&mut cx) {
        // `into_data` cannot fail: a `Full` yields data frames only.
        Poll::Ready(Some(Ok(frame))) => Some(frame.into_data().ok()),
        Poll::Ready(None) => Some(None),
        Poll::Ready(Some(Err(never))) => match never {},
        Poll::Pending => None,
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
    /// What was kept of the request to send again.
    pub(crate) fn request(&self) -> &KeptRequest {
        match self {
            Replay::Streamed(shared) => &shared.kept,
            Replay::Whole(kept) => kept,
        }
    }

    /// The body for the retry, if the first attempt has let go of it and it can be replayed.
    pub(crate) fn take(&self) -> Take<B> {
        let shared = match self {
            Replay::Streamed(shared) => shared,
            Replay::Whole(kept) => {
                let kind = Kind::Whole(kept.data().cloned());
                return Take::Ready(ReplayBody { kind });
            }
        };
        if shared.gave_up.load(Ordering::SeqCst) {
            return Take::Refused;
        }
        // The first attempt hands its state over before it clears `in_use`, under this lock:
        // once the swap below finds the body released, the state read after it is final.
        let state = shared.lock();
        if shared.in_use.swap(true, Ordering::SeqCst) {
            return Take::Held;
        }
        if state.over_cap || state.failed {
            return Take::Refused;
        }
        drop(state);
        Take::Ready(ReplayBody {
            kind: Kind::Retry(RetryAttempt {
                shared: Arc::clone(shared),
                sent_frames: 0,
                sent_trailers: false,
                polled: false,
            }),
        })
    }

    /// Announces that the retry waits for the first attempt's body (after [`take`](Self::take)
    /// said `Held`), and resolves once it has been dropped or has given up keeping frames: at
    /// once if that happened in between, since the future re-checks before each wait.
    pub(crate) fn released(&self) -> impl Future<Output = ()> + Send + Sync + 'static
    where
        B: Send + 'static,
    {
        let shared = match self {
            Replay::Streamed(shared) => Some(Arc::clone(shared)),
            // `take` never says `Held` for it.
            Replay::Whole(_) => None,
        };
        if let Some(shared) = &shared {
            shared.retry_waiting.store(true, Ordering::SeqCst);
        }
        async move {
            let Some(shared) = shared else { return };
            // Until the first attempt lets go of the body, or gives up on keeping it (then
            // `take` refuses, and the refusal need not wait for the upload to end).
            while shared.in_use.load(Ordering::SeqCst) && !shared.gave_up.load(Ordering::SeqCst) {
                shared.released.notified().await;
            }
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
            Kind::Whole(data) => Poll::Ready(data.take().map(|data| Ok(Frame::data(data)))),
            Kind::Passthrough(body) => Pin::new(body).poll_frame(cx).map(|frame| {
                frame.map(|frame| frame.map(|f| f.map_data(into_bytes)).map_err(Into::into))
            }),
            Kind::First(first) => first.poll_frame(cx),
            Kind::Retry(retry) => retry.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Whole(data) => data.is_none(),
            Kind::Passthrough(body) => body.is_end_stream(),
            Kind::First(first) => first.is_end_stream(),
            Kind::Retry(retry) => retry.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Whole(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            Kind::Passthrough(body) => body.size_hint(),
            Kind::First(first) => first.size_hint(),
            Kind::Retry(retry) => retry.size_hint(),
        }
    }
}

fn into_bytes<D: Buf>(mut data: D) -> Bytes {
    // Zero-copy when `D` is `Bytes`.
    data.copy_to_bytes(data.remaining())
}

impl<B> fmt::Debug for ReplayBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Passthrough(_) => "passthrough",
            Kind::Whole(_) => "whole",
            Kind::First(_) => "first attempt",
            Kind::Retry(_) => "replay",
        };
        f.debug_struct("ReplayBody").field("kind", &kind).finish()
    }
}

mod attempts;
mod kept;
#[cfg(test)]
mod tests;
