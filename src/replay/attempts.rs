//! The two attempt bodies of a replayable request: the first, which streams the caller's body
//! without a lock and keeps its frames, and the retry, which replays them from the shared state.

use std::{
    pin::Pin,
    sync::{Arc, atomic::Ordering},
    task::{Context, Poll},
};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

use super::{BodyState, Shared, into_bytes, kept::Kept};
use crate::error::BoxError;

/// The first attempt. It streams the caller's body from the shared state, under the lock
/// (uncontended: the retry reads that state only once this attempt is gone), and keeps its
/// frames there. So it is two words: a client moves the request body it was given through
/// several futures (hyper-util's client: into its pool checkout, its dispatch channel and its
/// connection task), and with the body and the kept frames inline, those moves and the boxed
/// futures that hold them cost ~1,200 instructions and a larger allocation per request.
pub(super) struct First<B> {
    pub(super) shared: Arc<Shared<B>>,
    /// Still keeping frames: under the cap, the body has not failed, and a retry may come.
    pub(super) keeping: bool,
    /// Polled at least once (until then its size hint is the one recorded when it was wrapped,
    /// read without the lock).
    pub(super) polled: bool,
}

impl<B> First<B> {
    pub(super) fn new(shared: Arc<Shared<B>>) -> Self {
        Self {
            shared,
            keeping: true,
            polled: false,
        }
    }
}

/// The retry's body, read from the shared state.
pub(super) struct RetryAttempt<B> {
    pub(super) shared: Arc<Shared<B>>,
    /// Frames of `kept` this attempt has sent.
    pub(super) sent_frames: usize,
    pub(super) sent_trailers: bool,
    /// Polled at least once (until then its size hint is the caller's body's at wrap time).
    pub(super) polled: bool,
}

impl<B> Shared<B> {
    /// An attempt body is gone: a waiting retry may take the body.
    fn release(&self) {
        self.in_use.store(false, Ordering::SeqCst);
        self.wake_retry();
    }

    /// Wakes the retry if it announced that it waits. Called after the store it waits for: both
    /// are `SeqCst`, like the retry's announcement and its check, so either the retry sees the
    /// store or this sees the retry waiting (and `Notify` keeps the permit if it is not polled
    /// yet).
    fn wake_retry(&self) {
        // Nearly always nobody waits: then no wake-up is owed.
        if self.retry_waiting.load(Ordering::SeqCst) {
            self.released.notify_one();
        }
    }
}

impl<B> Drop for First<B> {
    fn drop(&mut self) {
        // What the retry needs is in the shared state already.
        self.shared.release();
    }
}

impl<B> Drop for RetryAttempt<B> {
    fn drop(&mut self) {
        self.shared.release();
    }
}

impl<B> First<B>
where
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    pub(super) fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.polled = true;
        let (shared, keeping) = (&self.shared, &mut self.keeping);
        let mut state = shared.lock();
        let state = &mut *state;
        state.first_polled = true;
        loop {
            let Some(body) = state.rest.as_mut() else {
                return Poll::Ready(None);
            };
            let frame = match Pin::new(&mut *body).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    state.rest = None;
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Err(err))) => {
                    state.failed = true;
                    Self::give_up(shared, keeping, &mut state.kept);
                    return Poll::Ready(Some(Err(err.into())));
                }
                Poll::Ready(Some(Ok(frame))) => frame,
            };
            if body.is_end_stream() {
                // Report the end with this frame, not one poll later: HTTP/2 then sets
                // END_STREAM on this DATA frame instead of sending an empty one after it.
                state.rest = None;
            }
            match frame.into_data() {
                Ok(data) => {
                    let chunk = into_bytes(data);
                    Self::keep(shared, keeping, state, &chunk);
                    return Poll::Ready(Some(Ok(Frame::data(chunk))));
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        if *keeping {
                            state.trailers = Some(Box::new(trailers.clone()));
                        }
                        return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                    }
                    // Neither data nor trailers: not part of http-body 1.0; skip it.
                }
            }
        }
    }

    pub(super) fn is_end_stream(&self) -> bool {
        // Asked of the body itself: it may reach its end unpolled (h2's request body does when
        // END_STREAM arrives). Trailers are sent as soon as they are read: only the body can be
        // left.
        self.shared
            .lock()
            .rest
            .as_ref()
            .is_none_or(B::is_end_stream)
    }

    pub(super) fn size_hint(&self) -> SizeHint {
        if !self.polled {
            // Unread since it was wrapped: its hint then, without the lock. What is left to
            // read only shrinks as it is read, so an unread body's hint stays true (at worst
            // looser than it could now be).
            return self.shared.hint;
        }
        self.shared
            .lock()
            .rest
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), B::size_hint)
    }

    /// Keeps a frame this attempt sends, up to the cap.
    fn keep(shared: &Arc<Shared<B>>, keeping: &mut bool, state: &mut BodyState<B>, chunk: &Bytes) {
        if !*keeping {
            return;
        }
        // Once the response future is gone (it holds the other reference), no retry can come.
        if Arc::strong_count(shared) == 1 {
            *keeping = false;
            state.kept = Kept::default();
            return;
        }
        if state.kept.len() + chunk.len() > shared.cap {
            tracing::trace!(
                cap = shared.cap,
                "request body passed the replay cap; replay refused"
            );
            state.over_cap = true;
            Self::give_up(shared, keeping, &mut state.kept);
            return;
        }
        state.kept.push(chunk.clone());
    }

    /// No replay: past the cap, or the caller's body failed. Frees what was kept and tells a
    /// refused request's recovery at once, so it does not wait for this attempt to end.
    fn give_up(shared: &Shared<B>, keeping: &mut bool, kept: &mut Kept) {
        *keeping = false;
        *kept = Kept::default();
        if !shared.gave_up.swap(true, Ordering::SeqCst) {
            shared.wake_retry();
        }
    }
}

impl<B> RetryAttempt<B>
where
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    pub(super) fn is_end_stream(&self) -> bool {
        let state = self.shared.lock();
        if !self.polled && state.first_polled {
            // The first attempt went out with a body (its client polled it): so does the retry.
            return false;
        }
        state.rest.as_ref().is_none_or(Body::is_end_stream)
            && self.sent_frames >= state.kept.frames()
            && (self.sent_trailers || state.trailers.is_none())
    }

    pub(super) fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.polled = true;
        let mut state = self.shared.lock();
        if state.over_cap {
            // `Replay::take` refuses such a body; never send a truncated one.
            return Poll::Ready(Some(Err(
                "the request body can no longer be replayed".into()
            )));
        }
        // Replay what the first attempt sent.
        if let Some(chunk) = state.kept.get(self.sent_frames) {
            let chunk = chunk.clone();
            self.sent_frames += 1;
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
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
                state.rest = None;
            }
            match frame.into_data() {
                Ok(data) => return Poll::Ready(Some(Ok(Frame::data(into_bytes(data))))),
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        self.sent_trailers = true;
                        return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                    }
                }
            }
        }
        if !self.sent_trailers {
            if let Some(trailers) = &state.trailers {
                self.sent_trailers = true;
                return Poll::Ready(Some(Ok(Frame::trailers(HeaderMap::clone(trailers)))));
            }
        }
        Poll::Ready(None)
    }

    pub(super) fn size_hint(&self) -> SizeHint {
        if !self.polled && self.shared.exact_size {
            // What the first attempt declared before it was read, and so was framed by: the
            // kept bytes plus the rest's own hint would trust a rest that may still declare
            // the whole body (a hint that does not shrink as the body is read).
            return self.shared.hint;
        }
        let state = self.shared.lock();
        let unsent = state.kept.len_from(self.sent_frames);
        let hint = match &state.rest {
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
        };
        match hint.exact() {
            // The caller's body did not declare its size: neither does its replay, so that the
            // retry is framed as the first attempt was (see `Shared::exact_size`).
            Some(size) if !self.shared.exact_size => {
                let mut unknown = SizeHint::new();
                unknown.set_lower(size);
                unknown
            }
            _ => hint,
        }
    }
}
