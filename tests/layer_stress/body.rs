//! The callers' request bodies: frames of random sizes, some around or over the replay cap,
//! with or without an exact size hint, sometimes trailers, a stall or a failure; and the
//! digest a body read to its end must match, on either attempt.

use std::{
    collections::VecDeque,
    future::Future,
    io,
    pin::Pin,
    sync::OnceLock,
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use tokio::time::Sleep;

use crate::{common::hash_bytes, rng::Rng};

/// How a body declares its size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// An exact hint of what is left, as `Full` and hyper's bodies give.
    Exact,
    /// An exact hint of the whole body that never shrinks as it is read: legal, and it once
    /// made a retry declare the wrong length (`layer_retry_framing.rs`).
    ExactFixed,
    /// No hint, as a stream has.
    Unknown,
    /// A lower bound only: what is left.
    AtLeast,
}

#[derive(Clone, Debug)]
pub struct BodySpec {
    pub chunks: Vec<Bytes>,
    pub trailers: Option<HeaderMap>,
    pub framing: Framing,
    /// `is_end_stream` is true once nothing is left; otherwise only once polled past the end.
    pub eager_end: bool,
    /// Before this frame the body is `Pending` for a while: a slow upload.
    pub stall: Option<(usize, Duration)>,
    /// At this frame the body fails instead.
    pub fail_at: Option<usize>,
}

/// What a body read to its end carried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Digest {
    pub len: u64,
    pub data: u64,
    pub trailers: u64,
}

impl Digest {
    pub fn of(data: &[u8], trailers: Option<&HeaderMap>) -> Self {
        let mut pairs: Vec<String> = trailers
            .into_iter()
            .flatten()
            .map(|(name, value)| format!("{name}: {value:?}"))
            .collect();
        pairs.sort();
        Digest {
            len: data.len() as u64,
            data: hash_bytes(data),
            trailers: trailers.map_or(0, |_| hash_bytes(pairs.join("\n").as_bytes())),
        }
    }
}

/// What the caller sent, as the checks need it.
#[derive(Clone, Debug)]
pub struct Expected {
    pub digest: Digest,
    /// The exact size the body declared when it was sent, if it declared one.
    pub exact: Option<u64>,
    /// The lower bound of its size hint when it was sent.
    pub lower: u64,
    /// It was known to be empty when it was sent (the layer then sends an empty body as is).
    pub empty: bool,
    pub fails: bool,
}

/// Bytes to cut chunks from: each chunk starts at a random offset, so that two chunks of one
/// body almost never have the same content, and a replay that reorders or repeats them shows.
fn pattern() -> &'static Bytes {
    static PATTERN: OnceLock<Bytes> = OnceLock::new();
    PATTERN.get_or_init(|| {
        let mut rng = Rng::new(0x5eed_b0d1);
        (0..192 * 1024).map(|_| rng.next_u64() as u8).collect()
    })
}

impl BodySpec {
    pub fn generate(rng: &mut Rng, cap: usize, stall_max: Duration) -> Self {
        let mut sizes = Vec::new();
        match rng.pick(&[(10, 0), (40, 1), (30, 2), (12, 3), (8, 4)]) {
            0 => {}
            1 => (0..rng.range(1, 3)).for_each(|_| sizes.push(rng.range(1, 200))),
            2 => (0..rng.range(1, 5)).for_each(|_| sizes.push(rng.range(0, 3_000))),
            // Around the cap, where "fits" turns into "over it".
            3 => {
                let total = rng.range(cap as u64 - cap.min(8) as u64, cap as u64 + 8);
                let frames = rng.range(1, 4);
                for i in 0..frames {
                    sizes.push(total / frames + u64::from(i == 0) * (total % frames));
                }
            }
            _ => (0..rng.range(2, 6)).for_each(|_| sizes.push(rng.range(1_000, 12_000))),
        }
        let chunks: Vec<Bytes> = sizes
            .into_iter()
            .map(|len| {
                let at = rng.range(0, 64 * 1024) as usize;
                pattern().slice(at..at + len as usize)
            })
            .collect();
        let trailers = rng.chance(20).then(|| {
            let mut trailers = HeaderMap::new();
            for i in 0..rng.range(1, 2) {
                let name = HeaderName::try_from(format!("x-trailer-{i}")).unwrap();
                trailers.insert(name, HeaderValue::from(rng.next_u64() % 10_000));
            }
            trailers
        });
        let frames = chunks.len() + usize::from(trailers.is_some());
        BodySpec {
            framing: rng.pick(&[
                (3, Framing::Exact),
                (1, Framing::ExactFixed),
                (3, Framing::Unknown),
                (1, Framing::AtLeast),
            ]),
            eager_end: rng.chance(70),
            stall: (frames > 0 && rng.chance(15)).then(|| {
                let pause = stall_max.mul_f64(rng.range(1, 100) as f64 / 100.0);
                (rng.range(0, frames as u64 - 1) as usize, pause)
            }),
            fail_at: rng.chance(4).then(|| rng.range(0, frames as u64) as usize),
            chunks,
            trailers,
        }
    }

    fn total(&self) -> u64 {
        self.chunks.iter().map(|c| c.len() as u64).sum()
    }

    pub fn body(&self) -> StressBody {
        let mut frames: VecDeque<_> = self.chunks.iter().cloned().map(Frame::data).collect();
        frames.extend(self.trailers.clone().map(Frame::trailers));
        StressBody {
            frames,
            framing: self.framing,
            total: self.total(),
            left: self.total(),
            eager_end: self.eager_end,
            ended: false,
            next: 0,
            stall: self.stall,
            sleep: None,
            fail_at: self.fail_at,
        }
    }

    pub fn expected(&self) -> Expected {
        let body = self.body();
        let data = self.chunks.concat();
        Expected {
            digest: Digest::of(&data, self.trailers.as_ref()),
            exact: body.size_hint().exact(),
            lower: body.size_hint().lower(),
            empty: body.is_end_stream(),
            fails: self.fail_at.is_some(),
        }
    }
}

/// A request body as [`BodySpec`] describes it. (`common::Frames` scripts bodies that never
/// stall or fail, of exact or unknown size, ending eagerly: these need all of it.)
pub struct StressBody {
    frames: VecDeque<Frame<Bytes>>,
    framing: Framing,
    total: u64,
    left: u64,
    eager_end: bool,
    ended: bool,
    /// The index of the next frame.
    next: usize,
    stall: Option<(usize, Duration)>,
    sleep: Option<Pin<Box<Sleep>>>,
    fail_at: Option<usize>,
}

impl Body for StressBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        if let Some((_, pause)) = this.stall.filter(|&(at, _)| at == this.next) {
            let sleep = this
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(pause)));
            ready!(sleep.as_mut().poll(cx));
            (this.stall, this.sleep) = (None, None);
        }
        if this.fail_at == Some(this.next) {
            this.ended = true;
            return Poll::Ready(Some(Err(io::Error::other("the caller's body failed"))));
        }
        match this.frames.pop_front() {
            Some(frame) => {
                this.left -= frame.data_ref().map_or(0, |d| d.len() as u64);
                this.next += 1;
                Poll::Ready(Some(Ok(frame)))
            }
            None => {
                this.ended = true;
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let failure_ahead = self.fail_at.is_some_and(|at| at >= self.next);
        self.ended || (self.eager_end && self.frames.is_empty() && !failure_ahead)
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Exact => SizeHint::with_exact(self.left),
            Framing::ExactFixed => SizeHint::with_exact(self.total),
            Framing::Unknown => SizeHint::new(),
            Framing::AtLeast => {
                let mut hint = SizeHint::new();
                hint.set_lower(self.left);
                hint
            }
        }
    }
}
