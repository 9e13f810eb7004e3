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

use super::{Shared, into_bytes, kept::Kept};
use crate::error::BoxError;

/// The first attempt. It streams without taking the lock: the caller's body and the frames it
/// keeps are its own until it is dropped, when it hands them to the shared state for the
/// retry. The body is taken out of the shared state at the first poll, so an attempt dropped
/// unpolled (the server answered first, or the request never went out) costs no lock at all.
pub(super) struct First<B> {
    pub(super) shared: Arc<Shared<B>>,
    /// Whether the body was taken out of the shared state (at the first poll).
    pub(super) taken: bool,
    /// The caller's body, once taken; `None` again once it ended.
    pub(super) body: Option<B>,
    pub(super) kept: Kept,
    /// Still keeping frames: under the cap, the body has not failed, and a retry may come.
    pub(super) keeping: bool,
}

/// The retry's body, read from the shared state.
pub(super) struct RetryAttempt<B> {
    pub(super) shared: Arc<Shared<B>>,
    /// Frames of `kept` this attempt has sent.
    pub(super) sent_frames: usize,
    pub(super) sent_trailers: bool,
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
        // Hand what the retry needs to the shared state, unless no retry can come (the response
        // future, which holds the other reference, is gone) or nothing was taken from it.
        if self.taken && Arc::strong_count(&self.shared) > 1 {
            let mut state = self.shared.lock();
            state.rest = self.body.take();
            state.kept = std::mem::take(&mut self.kept);
            state.over_cap |= !self.keeping;
        }
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
        if !self.taken {
            self.taken = true;
            self.body = self.shared.lock().rest.take();
        }
        loop {
            let Some(body) = self.body.as_mut() else {
                return Poll::Ready(None);
            };
            let frame = match Pin::new(&mut *body).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    self.body = None;
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Err(err))) => {
                    self.give_up();
                    return Poll::Ready(Some(Err(err.into())));
                }
                Poll::Ready(Some(Ok(frame))) => frame,
            };
            if body.is_end_stream() {
                // Report the end with this frame, not one poll later: HTTP/2 then sets
                // END_STREAM on this DATA frame instead of sending an empty one after it.
                self.body = None;
            }
            match frame.into_data() {
                Ok(data) => {
                    let chunk = into_bytes(data);
                    self.keep(&chunk);
                    return Poll::Ready(Some(Ok(Frame::data(chunk))));
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        if self.keeping {
                            // Rare: kept where the retry reads them, at once.
                            self.shared.lock().trailers = Some(Box::new(trailers.clone()));
                        }
                        return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                    }
                    // Neither data nor trailers: not part of http-body 1.0; skip it.
                }
            }
        }
    }

    pub(super) fn is_end_stream(&self) -> bool {
        if !self.taken {
            // Until the first poll the body is in the shared state, and it may reach its end
            // unpolled (h2's request body does when END_STREAM arrives): ask it, under the lock.
            return self
                .shared
                .lock()
                .rest
                .as_ref()
                .is_none_or(B::is_end_stream);
        }
        // Trailers are sent as soon as they are read: only the body can be left.
        self.body.as_ref().is_none_or(B::is_end_stream)
    }

    pub(super) fn size_hint(&self) -> SizeHint {
        if !self.taken {
            // Untouched since it was wrapped: its hint then, without the lock. What is left to
            // read only shrinks as it is read, so an unread body's hint stays true (at worst
            // looser than it could now be).
            return self.shared.hint;
        }
        self.body
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), B::size_hint)
    }

    /// Keeps a frame this attempt sends, up to the cap.
    fn keep(&mut self, chunk: &Bytes) {
        if !self.keeping {
            return;
        }
        // Once the response future is gone (it holds the other reference), no retry can come.
        if Arc::strong_count(&self.shared) == 1 {
            self.keeping = false;
            self.kept = Kept::default();
            return;
        }
        if self.kept.len() + chunk.len() > self.shared.cap {
            tracing::trace!(
                cap = self.shared.cap,
                "request body passed the replay cap; replay refused"
            );
            self.give_up();
            return;
        }
        self.kept.push(chunk.clone());
    }

    /// No replay: past the cap, or the caller's body failed. Frees what was kept and tells a
    /// refused request's recovery at once, so it does not wait for this attempt to end.
    fn give_up(&mut self) {
        self.keeping = false;
        self.kept = Kept::default();
        if !self.shared.gave_up.swap(true, Ordering::SeqCst) {
            self.shared.wake_retry();
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
        state.rest.as_ref().is_none_or(Body::is_end_stream)
            && self.sent_frames >= state.kept.frames()
            && (self.sent_trailers || state.trailers.is_none())
    }

    pub(super) fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
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
