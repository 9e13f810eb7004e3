//! The protected API at the bottom of the stack, in process: it refuses every token it does
//! not consider valid now (revoked, expired, never issued, or any during the refuse-all phase)
//! and answers the rest at random (200, a 401 that is no refusal, 403, 503, gRPC statuses, an
//! error). It reads the request body fully, partly or not at all before it answers, or only
//! later (as a server that refuses before the upload ends does).

use std::{
    collections::BTreeSet,
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use http::{HeaderMap, Response, StatusCode, header};
use http_body::Body;
use http_body_util::BodyExt;
use tokio::time::Instant;
use tower::{BoxError, Service};

use crate::{
    body::Digest,
    ledger::Ledger,
    rng::{Rng, Stream},
    scenario::Scenario,
    stack::{ApiBody, InnerRequest},
    tap::AttemptTag,
    tokens::Tokens,
};

/// Marks the end-of-scenario probes: answered 200 at once if the token is valid.
pub const PROBE_HEADER: &str = "x-stress-probe";

/// What the API does with a token it takes.
#[derive(Clone, Copy, Debug)]
pub enum Verdict {
    Accept,
    /// Refuses it anyway (a stale backend).
    Refuse,
    /// `insufficient_scope`, gRPC `PERMISSION_DENIED`: no new token helps.
    Deny,
    /// Refuses it anyway, with a 401 that offers only `Basic`: a refusal all the same
    /// (DESIGN.md decision 8).
    BasicOnly,
    Forbidden,
    Unavailable,
    /// The inner service fails.
    Fail,
}

/// How the API treats the request body.
#[derive(Clone, Copy, Debug)]
pub enum Read {
    All,
    /// A few frames, then it drops the body.
    Part,
    Ignore,
    /// Answers at once and reads the body after a while, on a task of its own.
    Drain,
}

#[derive(Clone, Debug)]
pub struct ApiPlan {
    pub verdicts: Vec<(u32, Verdict)>,
    pub read_accepted: Vec<(u32, Read)>,
    pub read_refused: Vec<(u32, Read)>,
    pub delay_max: Duration,
    /// How many answers in a hundred take long (a long poll, a slow upstream): between
    /// `long` and twice that, holding whatever capacity their call took.
    pub long_percent: u64,
    pub long: Duration,
    pub drain_max: Duration,
}

/// Which refusal a token the API does not take gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    InvalidToken,
    NoChallenge,
    BearerRealm,
    /// A 401 whose challenges are of other schemes only.
    OtherScheme,
    GrpcUnauthenticated,
}

/// What the API answered, as it means it: the oracle for what the layer must treat as a
/// refusal (README, "refusal"), independent of the layer's classifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Refused(Refusal),
    InsufficientScope,
    Forbidden,
    Unavailable,
    GrpcPermissionDenied,
    GrpcUnavailable,
    Failed,
}

impl Outcome {
    pub fn is_refusal(self) -> bool {
        matches!(self, Outcome::Refused(_))
    }

    fn of(verdict: Verdict, grpc: bool, rng: &mut Rng) -> Self {
        match (verdict, grpc) {
            (Verdict::Accept, _) => Outcome::Ok,
            (Verdict::Refuse, _) => refusal(grpc, rng),
            (Verdict::Fail, _) => Outcome::Failed,
            (Verdict::Unavailable, true) => Outcome::GrpcUnavailable,
            (_, true) => Outcome::GrpcPermissionDenied,
            (Verdict::Deny, false) => Outcome::InsufficientScope,
            (Verdict::BasicOnly, false) => Outcome::Refused(Refusal::OtherScheme),
            (Verdict::Forbidden, false) => Outcome::Forbidden,
            (Verdict::Unavailable, false) => Outcome::Unavailable,
        }
    }

    fn response(self, tag: AttemptTag) -> Result<Response<()>, BoxError> {
        let (status, headers): (u16, &[(&str, &str)]) = match self {
            Outcome::Ok => (200, &[]),
            Outcome::Refused(Refusal::InvalidToken) => (
                401,
                &[("www-authenticate", r#"Bearer error="invalid_token""#)],
            ),
            Outcome::Refused(Refusal::NoChallenge) => (401, &[]),
            Outcome::Refused(Refusal::BearerRealm) => {
                (401, &[("www-authenticate", r#"Bearer realm="stress""#)])
            }
            Outcome::Refused(Refusal::GrpcUnauthenticated) => (200, &[("grpc-status", "16")]),
            Outcome::InsufficientScope => (
                401,
                &[("www-authenticate", r#"Bearer error="insufficient_scope""#)],
            ),
            Outcome::Refused(Refusal::OtherScheme) => {
                (401, &[("www-authenticate", r#"Basic realm="stress""#)])
            }
            Outcome::Forbidden => (403, &[]),
            Outcome::Unavailable => (503, &[]),
            Outcome::GrpcPermissionDenied => (200, &[("grpc-status", "7")]),
            Outcome::GrpcUnavailable => (200, &[("grpc-status", "14")]),
            Outcome::Failed => return Err("the API failed".into()),
        };
        let mut response = Response::new(());
        *response.status_mut() = StatusCode::from_u16(status).unwrap();
        for (name, value) in headers {
            response.headers_mut().append(*name, value.parse().unwrap());
            if *name == "grpc-status" {
                let grpc = "application/grpc".parse().unwrap();
                response.headers_mut().insert(header::CONTENT_TYPE, grpc);
            }
        }
        response.extensions_mut().insert(ResponseTag {
            id: tag.id,
            attempt: tag.number,
            outcome: self,
        });
        Ok(response)
    }
}

fn refusal(grpc: bool, rng: &mut Rng) -> Outcome {
    Outcome::Refused(match grpc {
        true => Refusal::GrpcUnauthenticated,
        false => rng.pick(&[
            (3, Refusal::InvalidToken),
            (1, Refusal::NoChallenge),
            (1, Refusal::BearerRealm),
        ]),
    })
}

/// Which request and attempt a response answers, and what the API meant by it.
#[derive(Clone, Copy, Debug)]
pub struct ResponseTag {
    pub id: u64,
    pub attempt: u32,
    pub outcome: Outcome,
}

#[derive(Clone)]
pub struct MockApi {
    shared: Arc<Shared>,
}

struct Shared {
    seed: u64,
    plan: ApiPlan,
    tokens: Arc<Tokens>,
    ledger: Arc<Ledger>,
    /// Calls not answered yet and bodies still being drained.
    busy: AtomicUsize,
    /// Requests whose first attempt's body the API still holds.
    holding: Mutex<BTreeSet<u64>>,
}

/// Counts a call, or a drain, until it is dropped.
struct Busy(Arc<Shared>);

impl Busy {
    fn new(shared: &Arc<Shared>) -> Self {
        shared.busy.fetch_add(1, Ordering::SeqCst);
        Busy(Arc::clone(shared))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

impl MockApi {
    pub fn new(sc: &Scenario, tokens: Arc<Tokens>, ledger: Arc<Ledger>) -> Self {
        MockApi {
            shared: Arc::new(Shared {
                seed: sc.seed,
                plan: sc.api.clone(),
                tokens,
                ledger,
                busy: AtomicUsize::new(0),
                holding: Mutex::default(),
            }),
        }
    }

    /// Calls and drains still under way.
    pub fn busy(&self) -> usize {
        self.shared.busy.load(Ordering::SeqCst)
    }
}

impl Service<InnerRequest> for MockApi {
    type Response = Response<()>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<()>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: InnerRequest) -> Self::Future {
        let api = Arc::clone(&self.shared);
        let Some(tag) = request.extensions().get::<AttemptTag>().cloned() else {
            api.ledger
                .violation("a request reached the API without passing the tap");
            return Box::pin(async { Err("untapped".into()) });
        };
        // Two attempts never stream one body at once (DESIGN 7, linkerd's sharp edge): the
        // retry's body exists only once the first attempt's is gone (a body known to be empty
        // has nothing to stream: both attempts send it as is).
        if tag.number == 2 && api.holding.lock().unwrap().contains(&tag.id) {
            api.ledger.violation(format!(
                "request {} attempt 2 reached the API while it still held attempt 1's body",
                tag.id
            ));
        }
        let mut rng = Rng::stream(
            api.seed,
            Stream::Response,
            tag.id * 4 + u64::from(tag.number),
        );
        let grpc = is_grpc(request.headers());
        let probe = request.headers().contains_key(PROBE_HEADER);
        let outcome = match api.tokens.accepts(&tag.token, Instant::now()) {
            false => refusal(grpc, &mut rng),
            true if probe => Outcome::Ok,
            true => Outcome::of(rng.pick(&api.plan.verdicts), grpc, &mut rng),
        };
        let read = match (probe, outcome.is_refusal()) {
            (true, _) => Read::All,
            (false, true) => rng.pick(&api.plan.read_refused),
            (false, false) => rng.pick(&api.plan.read_accepted),
        };
        let fraction = |rng: &mut Rng, of: Duration| of.mul_f64(rng.range(0, 100) as f64 / 100.0);
        let delay = match (probe, rng.chance(api.plan.long_percent)) {
            (true, _) => Duration::ZERO,
            (false, true) => api.plan.long + fraction(&mut rng, api.plan.long),
            (false, false) if rng.chance(40) => Duration::ZERO,
            (false, false) => fraction(&mut rng, api.plan.delay_max),
        };
        let frames = match read {
            Read::All | Read::Drain => usize::MAX,
            Read::Part => rng.range(0, 3) as usize,
            Read::Ignore => 0,
        };
        let drain = fraction(&mut rng, api.plan.drain_max);
        let busy = Busy::new(&api);
        Box::pin(async move {
            let _busy = busy;
            let mut body = request.into_body();
            match read {
                Read::Drain => api.drain(tag.clone(), body, drain),
                _ => {
                    api.read(&tag, &mut body, frames).await;
                    drop(body);
                }
            }
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            outcome.response(tag)
        })
    }
}

impl Shared {
    /// Reads up to `frames` frames, as a server does: it stops at the end the body reports.
    async fn read(&self, tag: &AttemptTag, body: &mut ApiBody, frames: usize) {
        let (mut data, mut trailers) = (Vec::new(), None::<HeaderMap>);
        let mut ended = body.is_end_stream();
        for _ in 0..frames {
            if ended {
                break;
            }
            match body.frame().await {
                None => ended = true,
                Some(Err(_)) => return self.ledger.body_failed(tag),
                Some(Ok(frame)) => {
                    match frame.into_data() {
                        Ok(chunk) => {
                            self.ledger.body_read(tag, chunk.len());
                            data.extend_from_slice(&chunk);
                        }
                        Err(frame) => trailers = frame.into_trailers().ok(),
                    }
                    ended = body.is_end_stream();
                }
            }
        }
        if ended {
            self.ledger
                .body_ended(tag, Digest::of(&data, trailers.as_ref()));
        }
    }

    /// Holds the body and reads it after `after`, on a task of its own.
    fn drain(self: &Arc<Self>, tag: AttemptTag, mut body: ApiBody, after: Duration) {
        let busy = Busy::new(self);
        if tag.number == 1 && !self.ledger.known_empty(tag.id) {
            self.holding.lock().unwrap().insert(tag.id);
        }
        let api = Arc::clone(self);
        tokio::spawn(async move {
            let _busy = busy;
            tokio::time::sleep(after).await;
            api.read(&tag, &mut body, usize::MAX).await;
            // Let go of before it is dropped: the retry this wakes, on another thread perhaps,
            // must not find it held.
            api.holding.lock().unwrap().remove(&tag.id);
            drop(body);
        });
    }
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}
