use std::collections::VecDeque;

use http::HeaderValue;
use http_body_util::BodyExt;

use super::*;

/// A body of scripted frames with a chosen size hint.
struct Frames {
    frames: VecDeque<Result<Frame<Bytes>, BoxError>>,
    /// Stays what it was made with as frames are read: a body may (against http-body's "the
    /// remaining length") keep declaring its whole size.
    hint: SizeHint,
    /// `is_end_stream` stays false until a poll finds no frame (http-body's default).
    lazy_end: bool,
}

impl Frames {
    fn new(chunks: &[&'static str], trailers: bool) -> Self {
        let mut frames: VecDeque<_> = chunks
            .iter()
            .map(|c| Ok(Frame::data(Bytes::from_static(c.as_bytes()))))
            .collect();
        if trailers {
            let mut map = HeaderMap::new();
            map.insert("x-checksum", HeaderValue::from_static("abc"));
            frames.push_back(Ok(Frame::trailers(map)));
        }
        let len = chunks.iter().map(|c| c.len() as u64).sum();
        Self {
            frames,
            hint: SizeHint::with_exact(len),
            lazy_end: false,
        }
    }

    fn with_lazy_end(mut self) -> Self {
        self.lazy_end = true;
        self
    }

    fn without_size(mut self) -> Self {
        self.hint = SizeHint::new();
        self
    }

    fn failing_after(mut self, n: usize) -> Self {
        self.frames.truncate(n);
        self.frames.push_back(Err("upload broke".into()));
        self
    }
}

impl Body for Frames {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Poll::Ready(self.frames.pop_front())
    }

    fn is_end_stream(&self) -> bool {
        !self.lazy_end && self.frames.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

/// Reads `n` data frames (or all, with `usize::MAX`) and the trailers.
async fn read<B>(body: &mut ReplayBody<B>, n: usize) -> (Vec<u8>, Option<HeaderMap>)
where
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    let mut data = Vec::new();
    let mut trailers = None;
    let mut frames = 0;
    while frames < n {
        let Some(frame) = body.frame().await else {
            break;
        };
        let frame = frame.unwrap();
        match frame.into_data() {
            Ok(chunk) => {
                data.extend_from_slice(&chunk);
                frames += 1;
            }
            Err(frame) => trailers = frame.into_trailers().ok(),
        }
    }
    (data, trailers)
}

/// `body` wrapped as the layer wraps a request body.
fn replayable<B: Body + 'static>(body: B, cap: usize) -> (ReplayBody<B>, Option<Replay<B>>) {
    let request = http::Request::post("http://127.0.0.1/upload")
        .header("x-trace", "1")
        .body(body)
        .unwrap();
    let kept = KeptRequest::copy(&request).unwrap();
    let body = request.into_body();
    if !ReplayBody::fits(&body, cap) {
        return (ReplayBody::passthrough(body), None);
    }
    let (body, replay) = ReplayBody::first(body, kept, cap);
    (body, Some(replay))
}

/// The shared state of a replay whose body is streamed.
fn streamed<B>(replay: &Replay<B>) -> &Arc<Shared<B>> {
    match replay {
        Replay::Streamed(shared) => shared,
        Replay::Whole(_) => panic!("a streamed body"),
    }
}

fn take<B>(replay: &Replay<B>) -> ReplayBody<B> {
    match replay.take() {
        Take::Ready(body) => body,
        Take::Held => panic!("held"),
        Take::Refused => panic!("refused"),
    }
}

#[tokio::test]
async fn a_retry_replays_the_same_bytes_and_trailers() {
    let (mut first, replay) = replayable(Frames::new(&["ab", "cd", "ef"], true), 64);
    let replay = replay.unwrap();
    let (sent, trailers) = read(&mut first, usize::MAX).await;
    assert_eq!(sent, b"abcdef");
    assert!(first.is_end_stream());
    assert!(
        matches!(replay.take(), Take::Held),
        "the first attempt still holds it"
    );
    drop(first);

    let mut retry = take(&replay);
    assert_eq!(retry.size_hint().exact(), Some(6));
    let (replayed, replayed_trailers) = read(&mut retry, usize::MAX).await;
    assert_eq!(replayed, b"abcdef");
    assert_eq!(replayed_trailers, trailers);
    assert!(replayed_trailers.is_some());
    assert!(retry.is_end_stream());
}

#[tokio::test]
async fn a_retry_after_a_partial_first_attempt_replays_then_streams_the_rest() {
    let body = Frames::new(&["one-", "two-", "three"], true).without_size();
    let (mut first, replay) = replayable(body, 64);
    let (sent, _) = read(&mut first, 1).await;
    assert_eq!(sent, b"one-");
    drop(first); // the server answered early; the client let go of the body

    let mut retry = take(&replay.unwrap());
    let (all, trailers) = read(&mut retry, usize::MAX).await;
    assert_eq!(all, b"one-two-three");
    assert!(trailers.is_some());
}

#[tokio::test]
async fn past_the_cap_the_buffer_is_freed_and_replay_refused() {
    let body = Frames::new(&["0123456789", "0123456789", "0123456789"], false).without_size();
    let (mut first, replay) = replayable(body, 25);
    let replay = replay.unwrap();
    let (sent, _) = read(&mut first, usize::MAX).await;
    assert_eq!(sent.len(), 30, "the first attempt still gets every byte");
    let Kind::First(attempt) = &first.kind else {
        panic!("a replayable body's first attempt")
    };
    assert!(
        attempt.shared.lock().kept.is_freed(),
        "the buffer was freed"
    );
    assert!(
        matches!(replay.take(), Take::Refused),
        "refused at once, without waiting for the first attempt to end"
    );
    drop(first);
    assert!(streamed(&replay).lock().over_cap);
    assert!(matches!(replay.take(), Take::Refused));
}

#[test]
fn a_body_declared_larger_than_the_cap_is_never_buffered() {
    let (body, replay) = replayable(Frames::new(&["0123456789"], false), 5);
    assert!(replay.is_none());
    assert!(matches!(body.kind, Kind::Passthrough(_)));
}

#[tokio::test]
async fn an_empty_body_replays_as_empty_without_sharing_state() {
    let (first, replay) = replayable(Frames::new(&[], false), 64);
    assert!(first.is_end_stream());
    let replay = replay.unwrap();
    assert_eq!(
        replay.request().to_parts().unwrap().uri,
        "http://127.0.0.1/upload"
    );
    let mut retry = take(&replay);
    assert!(matches!(retry.kind, Kind::Whole(None)));
    assert_eq!(read(&mut retry, usize::MAX).await.0, b"");
}

#[tokio::test]
async fn two_attempts_never_stream_at_once() {
    let (mut first, replay) = replayable(Frames::new(&["ab", "cd"], false), 64);
    let replay = replay.unwrap();
    read(&mut first, 1).await;
    assert!(
        matches!(replay.take(), Take::Held),
        "the first attempt is still sending"
    );
    drop(first);
    let mut retry = take(&replay);
    assert!(
        matches!(replay.take(), Take::Held),
        "the retry holds it now"
    );
    assert_eq!(read(&mut retry, usize::MAX).await.0, b"abcd");
}

#[tokio::test]
async fn a_failed_body_is_not_replayed() {
    let body = Frames::new(&["ab", "cd"], false).failing_after(1);
    let (mut first, replay) = replayable(body, 64);
    first.frame().await.unwrap().unwrap();
    assert!(first.frame().await.unwrap().is_err());
    let replay = replay.unwrap();
    assert!(
        matches!(replay.take(), Take::Refused),
        "refused at once, before the first attempt is dropped"
    );
    drop(first);
    assert!(matches!(replay.take(), Take::Refused));
}

#[tokio::test]
async fn release_is_signalled_even_if_it_happened_before_the_wait() {
    let (first, replay) = replayable(Frames::new(&["ab"], false), 64);
    let replay = replay.unwrap();
    drop(first);
    tokio::time::timeout(std::time::Duration::from_secs(1), replay.released())
        .await
        .expect("a stored permit, not a lost wake-up");
}

#[tokio::test]
async fn passthrough_streams_the_body_unchanged() {
    // As the layer makes it, and as a user does (`new`, `From`).
    for mut body in [
        ReplayBody::passthrough(Frames::new(&["x", "y"], true)),
        ReplayBody::new(Frames::new(&["x", "y"], true)),
        ReplayBody::from(Frames::new(&["x", "y"], true)),
    ] {
        assert_eq!(body.size_hint().exact(), Some(2));
        let (data, trailers) = read(&mut body, usize::MAX).await;
        assert_eq!(data, b"xy");
        assert!(trailers.is_some());
        assert!(body.is_end_stream());
    }
}

#[tokio::test]
async fn a_first_attempt_dropped_unpolled_leaves_the_whole_body_for_the_retry() {
    let (first, replay) = replayable(Frames::new(&["ab", "cd"], true), 64);
    let replay = replay.unwrap();
    drop(first); // the request never went out, or the server answered before reading
    let mut retry = take(&replay);
    assert_eq!(retry.size_hint().exact(), Some(4));
    let (data, trailers) = read(&mut retry, usize::MAX).await;
    assert_eq!(data, b"abcd");
    assert!(trailers.is_some());
}

/// A client frames a body by its size hint before it polls it (HTTP/1.1 `content-length`),
/// and stops polling once that many bytes are out. A body that keeps declaring its whole size
/// as it is read, and reports its end only when polled past it, was left as the rest after a
/// whole first attempt: the retry then declared the kept bytes plus that rest (20 of 10), and
/// hyper aborted it short of its declared length. Unpolled, the retry declares what the
/// caller's body declared when it was wrapped, as the first attempt did.
#[tokio::test]
async fn an_unpolled_retry_declares_the_size_the_callers_body_declared() {
    let body = Frames::new(&["0123", "456789"], false).with_lazy_end();
    let (mut first, replay) = replayable(body, 64);
    assert_eq!(first.size_hint().exact(), Some(10));
    let (sent, _) = read(&mut first, 2).await;
    assert_eq!(sent, b"0123456789");
    drop(first); // hyper wrote the declared 10 bytes and let go without polling for the end

    let mut retry = take(&replay.unwrap());
    assert_eq!(retry.size_hint().exact(), Some(10));
    let (replayed, _) = read(&mut retry, usize::MAX).await;
    assert_eq!(replayed, b"0123456789");
    assert!(retry.is_end_stream());
}

#[tokio::test]
async fn the_first_attempt_reports_the_callers_hints_before_and_while_streaming() {
    let (mut first, _replay) = replayable(Frames::new(&["ab", "cd"], false), 64);
    assert_eq!(first.size_hint().exact(), Some(4), "before the first poll");
    assert!(!first.is_end_stream());
    let (data, _) = read(&mut first, 1).await;
    assert_eq!(data, b"ab");
    assert!(!first.is_end_stream());
    let (data, _) = read(&mut first, 1).await;
    assert_eq!(data, b"cd");
    assert!(
        first.is_end_stream(),
        "the end is reported with the last frame"
    );
    assert_eq!(first.size_hint().exact(), Some(0));
}

#[tokio::test]
async fn once_the_response_future_is_gone_nothing_is_kept_or_handed_over() {
    let (mut first, replay) = replayable(Frames::new(&["ab", "cd", "ef"], false), 64);
    let replay = replay.unwrap();
    let shared = Arc::downgrade(streamed(&replay));
    read(&mut first, 1).await;
    drop(replay); // the caller gave up on the response: no retry can come
    let (rest, _) = read(&mut first, usize::MAX).await;
    assert_eq!(rest, b"cdef", "the first attempt still sends every byte");
    let Kind::First(attempt) = &first.kind else {
        panic!("a replayable body's first attempt")
    };
    assert!(
        attempt.shared.lock().kept.is_freed(),
        "the kept frames were freed"
    );
    drop(first);
    assert!(
        shared.upgrade().is_none(),
        "the shared state is gone with the last attempt"
    );
}

#[tokio::test]
async fn the_end_is_not_reported_while_trailers_are_pending() {
    let (mut first, _replay) = replayable(Frames::new(&["ab"], true), 64);
    let (data, trailers) = read(&mut first, 1).await;
    assert_eq!(data, b"ab");
    assert!(trailers.is_none());
    assert!(!first.is_end_stream(), "the trailers are still to come");
    let (_, trailers) = read(&mut first, usize::MAX).await;
    assert!(trailers.is_some());
    assert!(first.is_end_stream());
}

/// Drops `body` on another thread.
fn drop_elsewhere<B: Send + 'static>(body: ReplayBody<B>) {
    std::thread::spawn(move || drop(body)).join().unwrap();
}

#[tokio::test]
async fn a_waiting_retry_is_woken_when_another_thread_lets_go_of_the_body() {
    let (mut first, replay) = replayable(Frames::new(&["ab", "cd"], true), 64);
    let replay = replay.unwrap();
    read(&mut first, 1).await;
    assert!(matches!(replay.take(), Take::Held));
    let wait = tokio::spawn(tokio::time::timeout(
        std::time::Duration::from_secs(5),
        replay.released(),
    ));
    tokio::task::yield_now().await; // the waiter parks
    drop_elsewhere(first);
    wait.await.unwrap().expect("woken, not timed out");
    let mut retry = take(&replay);
    let (data, trailers) = read(&mut retry, usize::MAX).await;
    assert_eq!(data, b"abcd");
    assert!(trailers.is_some());
}

#[tokio::test]
async fn a_waiting_retry_is_told_at_once_when_the_first_attempt_passes_the_cap() {
    let body = Frames::new(&["0123456789"; 4], false).without_size();
    let (mut first, replay) = replayable(body, 25);
    let replay = replay.unwrap();
    read(&mut first, 1).await;
    assert!(matches!(replay.take(), Take::Held));
    let wait = tokio::spawn(tokio::time::timeout(
        std::time::Duration::from_secs(5),
        replay.released(),
    ));
    tokio::task::yield_now().await; // the waiter parks
    read(&mut first, 2).await; // past the cap, and the first attempt still streams
    wait.await
        .unwrap()
        .expect("told when the first attempt gave up, not at the end of the upload");
    assert!(matches!(replay.take(), Take::Refused));
    drop(first);
}

#[tokio::test]
async fn a_hand_over_from_another_thread_is_seen_whole() {
    for _ in 0..200 {
        let (mut first, replay) = replayable(Frames::new(&["ab", "cd", "ef"], true), 64);
        let replay = replay.unwrap();
        read(&mut first, 2).await;
        let dropper = std::thread::spawn(move || drop(first));
        let mut retry = loop {
            match replay.take() {
                Take::Ready(body) => break body,
                Take::Held => std::thread::yield_now(),
                Take::Refused => panic!("refused"),
            }
        };
        dropper.join().unwrap();
        let (data, trailers) = read(&mut retry, usize::MAX).await;
        assert_eq!(data, b"abcdef");
        assert!(trailers.is_some());
    }
}

#[tokio::test]
async fn a_full_body_is_whole_in_memory_and_each_attempt_has_its_own_handle() {
    let data = Bytes::from_static(b"{\"code\": \"test\"}");
    let (mut first, replay) = replayable(http_body_util::Full::new(data.clone()), 64);
    let replay = replay.unwrap();
    assert!(matches!(replay, Replay::Whole(_)));
    // Framed as the `Full` itself frames: an exact size, and not at its end before its poll.
    assert_eq!(first.size_hint().exact(), Some(data.len() as u64));
    assert!(!first.is_end_stream());
    // The retry's body is ready while the first attempt still holds (and has not sent) its own.
    let mut retry = take(&replay);
    assert_eq!(retry.size_hint().exact(), Some(data.len() as u64));
    assert!(!retry.is_end_stream());
    for attempt in [&mut first, &mut retry] {
        let (sent, trailers) = read(attempt, usize::MAX).await;
        assert_eq!(sent, data);
        assert!(trailers.is_none());
        assert!(attempt.is_end_stream());
        assert_eq!(attempt.size_hint().exact(), Some(0));
    }
    assert_eq!(replay.request().to_parts().unwrap().headers["x-trace"], "1");
}

#[test]
fn only_a_full_of_bytes_is_taken_whole_and_only_under_the_cap() {
    // Boxed, it cannot be looked into: streamed and kept as it goes.
    let boxed = http_body_util::Full::new(Bytes::from_static(b"abc")).boxed_unsync();
    let (first, replay) = replayable(boxed, 64);
    assert!(matches!(replay, Some(Replay::Streamed(_))));
    assert!(matches!(first.kind, Kind::First(_)));
    // Over the cap: passed through, nothing kept.
    let (first, replay) = replayable(http_body_util::Full::new(Bytes::from_static(b"abc")), 2);
    assert!(replay.is_none());
    assert!(matches!(first.kind, Kind::Passthrough(_)));
}

#[tokio::test]
async fn a_streamed_body_of_exactly_the_cap_is_replayed_and_one_byte_more_is_not() {
    for (cap, replayed) in [(6, true), (5, false)] {
        // Of unknown size, so that only the kept bytes meet the cap.
        let body = Frames::new(&["abc", "def"], false).without_size();
        let (mut first, replay) = replayable(body, cap);
        let replay = replay.unwrap();
        assert!(matches!(replay, Replay::Streamed(_)));
        assert_eq!(read(&mut first, usize::MAX).await.0, b"abcdef");
        drop(first);
        match replay.take() {
            Take::Ready(mut retry) => {
                assert!(replayed, "cap {cap}: replayed past the cap");
                assert_eq!(read(&mut retry, usize::MAX).await.0, b"abcdef");
            }
            Take::Refused => assert!(!replayed, "cap {cap}: refused at the cap"),
            Take::Held => panic!("cap {cap}: the first attempt is gone"),
        }
    }
}
