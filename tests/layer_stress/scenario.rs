//! A scenario, all of it drawn from one seed: the stack around the layer, the layer's mode
//! (retry on, off, or `without_retry`), the layer's and the cache's settings, how the token
//! source and the API behave, when tokens are revoked, and the callers with their requests.

use std::{fmt, ops::Range, time::Duration};

use http::{Method, Version};

use crate::{
    body::BodySpec,
    mock_api::{ApiPlan, Read, Verdict},
    rng::Rng,
    tokens::{SourceAct, SourcePlan},
};

/// Which runtime a scenario runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Tokio's paused clock on a current-thread runtime: time costs nothing, and a seed
    /// replays the same scenario.
    Paused,
    /// A two-worker multi-thread runtime on the real clock, 50 times faster than the
    /// scenario's own durations say, so that a minute of scenario takes about a second.
    MultiThread,
}

impl Mode {
    /// A scenario duration given in milliseconds, as this mode runs it.
    pub fn ms(self, ms: u64) -> Duration {
        match self {
            Mode::Paused => Duration::from_millis(ms),
            Mode::MultiThread => Duration::from_micros(ms * 20),
        }
    }
}

/// What the layer does with a refusal: the one option that changes the layer's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// `retry(true)`, the default: a refusal is retried once, and the inner service gets a
    /// `ReplayBody`.
    On,
    /// `retry(false)`: the same service type, its `ReplayBody` a pass-through; never a retry.
    Off,
    /// `without_retry()`: a `BesenderAuth<_, NoRetry>`, whose inner service gets the caller's
    /// body as it is; never a retry.
    None,
}

impl Retry {
    /// Whether a refusal may be retried.
    pub fn retries(self) -> bool {
        self == Retry::On
    }
}

impl fmt::Display for Retry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Retry::On => "retry on",
            Retry::Off => "retry off",
            Retry::None => "without_retry (NoRetry)",
        })
    }
}

/// A tower middleware above or below the layer.
#[derive(Clone, Copy, Debug)]
pub enum Wrap {
    Buffer(usize),
    Limit(usize),
    Timeout(Duration),
}

/// The cache's settings that shape a scenario (the rest are the defaults). No jitter, and a
/// backoff that cannot grow past the error hold, so that a seed replays the same schedule.
#[derive(Clone, Debug)]
pub struct CachePlan {
    pub expiry_margin: Duration,
    pub min_forced_interval: Duration,
    pub fetch_timeout: Duration,
    pub backoff: Duration,
}

/// When the API takes tokens back.
#[derive(Clone, Copy, Debug)]
pub enum Revocation {
    /// The token issued last.
    Newest,
    /// Every token issued so far.
    All,
}

/// How a caller gives up on a request.
#[derive(Clone, Copy, Debug)]
pub enum Cancel {
    Never,
    /// Drops the request (readiness and response included) when it would be polled this time.
    AfterPolls(u32),
    /// Drops it after this long.
    After(Duration),
}

#[derive(Clone, Debug)]
pub struct RequestPlan {
    pub id: u64,
    /// How long the caller waits before this request (after its previous one).
    pub gap: Duration,
    pub grpc: bool,
    pub method: Method,
    pub version: Version,
    pub headers: Vec<(String, String)>,
    /// The caller sets an `Authorization` of its own, which the layer must replace.
    pub own_authorization: bool,
    pub body: BodySpec,
    pub cancel: Cancel,
    /// Time between the service reporting ready and the call (a caller that keeps it ready).
    pub dawdle: Option<Duration>,
}

#[derive(Clone, Debug)]
pub struct CallerPlan {
    pub start: Duration,
    /// Keeps one clone of the stack for all its requests, as a long-lived client does (it sits
    /// idle between them); otherwise each request gets a fresh clone.
    pub keeps_service: bool,
    pub requests: Vec<RequestPlan>,
}

#[derive(Clone, Debug)]
pub struct Scenario {
    pub seed: u64,
    pub mode: Mode,
    /// Outermost first.
    pub outer: Vec<Wrap>,
    /// The one right under the layer first.
    pub inner: Vec<Wrap>,
    pub retry: Retry,
    /// The replay's settings, drawn whatever `retry` is (so that the other draws stay put);
    /// they matter with retry on only.
    pub max_replay_bytes: usize,
    pub replay_wait: Duration,
    pub cache: CachePlan,
    pub source: SourcePlan,
    pub api: ApiPlan,
    pub revocations: Vec<(Duration, Revocation)>,
    /// The API refuses every token then (a 401 no new token can fix).
    pub refuse_all: Option<Range<Duration>>,
    pub callers: Vec<CallerPlan>,
    /// Callers start, tokens are revoked and the source misbehaves only before this; after it
    /// the source is healthy, so that the end-of-scenario checks can expect tokens.
    pub active: Duration,
}

impl Scenario {
    pub fn generate(seed: u64, mode: Mode) -> Self {
        let mut rng = Rng::new(seed);
        let ms = |ms: u64| mode.ms(ms);
        // Two in five scenarios are tight on capacity: a limit on each side of the layer,
        // and callers that keep their service between requests. That is where a service
        // holding inner capacity while it waits for a token deadlocks the stack.
        let tight = rng.chance(40);
        let (outer, inner) = match tight {
            false => (wraps(&mut rng, mode), wraps(&mut rng, mode)),
            true => tight_wraps(&mut rng, mode),
        };
        // One draw, as the on-or-off draw it replaced: a seed's other choices stay what they were.
        let retry = rng.pick(&[(14, Retry::On), (3, Retry::Off), (3, Retry::None)]);
        let max_replay_bytes = rng.pick(&[(3, 64), (3, 1024), (4, 16 * 1024), (1, 64 * 1024)]);
        let replay_wait = ms(rng.pick(&[(1, 50), (3, 1_000), (1, 3_000)]));
        let cache = CachePlan {
            expiry_margin: ms(rng.pick(&[(2, 0), (1, 2_000), (2, 10_000)])),
            min_forced_interval: ms(rng.pick(&[(1, 2_000), (3, 5_000)])),
            fetch_timeout: ms(rng.pick(&[(1, 4_000), (1, 10_000)])),
            backoff: ms(rng.pick(&[(1, 1_000), (1, 2_000)])),
        };
        // In a nasty scenario the source misbehaves often and tokens are revoked often.
        let nasty = tight || rng.chance(40);
        let source = source_plan(&mut rng, mode, nasty, tight);
        let api = api_plan(&mut rng, mode, tight);
        // Drawn in the scenario's milliseconds; `ms` makes them durations of this mode.
        let active = rng.range(30_000, if tight { 45_000 } else { 60_000 });
        let revocations = (0..rng.range(if tight { 6 } else { 0 }, if nasty { 12 } else { 5 }))
            .map(|_| {
                let at = ms(rng.range(0, active));
                (
                    at,
                    rng.pick(&[(4, Revocation::Newest), (1, Revocation::All)]),
                )
            })
            .collect();
        let refuse_all = rng.chance(25).then(|| {
            let start = rng.range(5_000, 20_000);
            start..start + rng.range(5_000, 10_000)
        });
        let mut next_id = 1;
        let callers = (0..rng.range(if tight { 20 } else { 6 }, 36))
            .map(|_| {
                let keeps_service = rng.chance(if tight { 85 } else { 25 });
                let count = match (keeps_service, tight) {
                    (false, _) => 1,
                    (true, false) => rng.range(2, 5),
                    (true, true) => rng.range(3, 6),
                };
                // Some callers start inside the refuse-all phase, so that it sees refusals.
                let start = match &refuse_all {
                    Some(phase) if rng.chance(30) => rng.range(phase.start, phase.end),
                    _ => rng.range(0, active - 5_000),
                };
                let requests = (0..count)
                    .map(|i| {
                        let id = next_id;
                        next_id += 1;
                        request(&mut rng, mode, id, i > 0, max_replay_bytes, tight)
                    })
                    .collect();
                CallerPlan {
                    start: ms(start),
                    keeps_service,
                    requests,
                }
            })
            .collect();
        Scenario {
            seed,
            mode,
            outer,
            inner,
            retry,
            max_replay_bytes,
            replay_wait,
            cache,
            source,
            api,
            revocations,
            refuse_all: refuse_all.map(|phase| ms(phase.start)..ms(phase.end)),
            callers,
            active: ms(active),
        }
    }

    pub fn requests(&self) -> usize {
        self.callers.iter().map(|c| c.requests.len()).sum()
    }
}

fn wraps(rng: &mut Rng, mode: Mode) -> Vec<Wrap> {
    (0..rng.pick(&[(3, 0), (4, 1), (2, 2)]))
        .map(|_| match rng.pick(&[(2, 0), (3, 1), (2, 2)]) {
            0 => Wrap::Buffer(rng.range(1, 4) as usize),
            1 => Wrap::Limit(rng.range(1, 3) as usize),
            _ => Wrap::Timeout(mode.ms(rng.range(1_000, 20_000))),
        })
        .collect()
}

/// A limit right above the layer (no `Buffer` between: each caller's clone must reach the
/// layer, and no `Timeout` above: it would end the waits a deadlock is made of), and one
/// under it, perhaps over a `Buffer` or a `Timeout`.
fn tight_wraps(rng: &mut Rng, mode: Mode) -> (Vec<Wrap>, Vec<Wrap>) {
    let outer = vec![Wrap::Limit(rng.pick(&[(3, 1), (1, 2)]))];
    let mut inner = vec![Wrap::Limit(rng.pick(&[(3, 1), (1, 2)]))];
    match rng.pick(&[(2, 0), (1, 1), (1, 2)]) {
        0 => {}
        1 => inner.push(Wrap::Buffer(rng.range(1, 4) as usize)),
        _ => inner.push(Wrap::Timeout(mode.ms(rng.range(1_000, 20_000)))),
    }
    (outer, inner)
}

fn source_plan(rng: &mut Rng, mode: Mode, nasty: bool, tight: bool) -> SourcePlan {
    // Failures matter most where capacity is tight: a call that fails for want of a token
    // must give back what the inner service reserved.
    let fail = match (nasty, tight) {
        (_, true) => rng.range(25, 45),
        (true, false) => rng.range(10, 30),
        (false, false) => rng.range(0, 6),
    };
    let (panic, same, stall) = match nasty {
        true => (rng.range(0, 6), rng.range(0, 10), rng.range(0, 5)),
        false => (rng.range(0, 2), rng.range(0, 4), rng.range(0, 2)),
    };
    let min_life = rng.range(20_000, 40_000);
    SourcePlan {
        acts: vec![
            (100, SourceAct::Fresh),
            (same as u32, SourceAct::Same),
            (fail as u32, SourceAct::Fail),
            (stall as u32, SourceAct::Stall),
            (panic as u32, SourceAct::Panic),
        ],
        // Where capacity is tight, fetches take a while, so that calls queued for a permit
        // get it while their service waits for a token.
        instant_percent: if tight { 10 } else { 50 },
        delay_max: mode.ms(match tight {
            true => 3_000,
            false => rng.pick(&[(1, 0), (2, 500), (2, 3_000)]),
        }),
        lifetime: mode.ms(min_life)..mode.ms(rng.range(min_life, 120_000)),
    }
}

fn api_plan(rng: &mut Rng, mode: Mode, tight: bool) -> ApiPlan {
    let mut weight = |lo, hi| rng.range(lo, hi) as u32;
    ApiPlan {
        verdicts: vec![
            (60, Verdict::Accept),
            (weight(0, 4), Verdict::Refuse),
            (weight(0, 6), Verdict::Deny),
            (weight(0, 3), Verdict::BasicOnly),
            (weight(0, 4), Verdict::Forbidden),
            (weight(0, 6), Verdict::Unavailable),
            (weight(0, 6), Verdict::Fail),
        ],
        read_accepted: vec![
            (60, Read::All),
            (weight(0, 20), Read::Part),
            (weight(0, 10), Read::Ignore),
            (weight(0, 15), Read::Drain),
        ],
        read_refused: vec![
            (30, Read::All),
            (weight(0, 25), Read::Part),
            (weight(0, 30), Read::Ignore),
            (weight(0, 30), Read::Drain),
        ],
        // Slow answers keep permits taken, so that calls queue for them.
        delay_max: mode.ms(match tight {
            true => 1_500,
            false => rng.pick(&[(1, 0), (2, 200), (2, 1_500)]),
        }),
        long_percent: rng.pick(&[(1, 0), (1, 3), (1, 8)]),
        long: mode.ms(20_000),
        drain_max: mode.ms(rng.pick(&[(1, 100), (1, 1_500), (1, 4_000)])),
    }
}

fn request(
    rng: &mut Rng,
    mode: Mode,
    id: u64,
    later: bool,
    cap: usize,
    tight: bool,
) -> RequestPlan {
    let grpc = rng.chance(25);
    let method = match rng.pick(&[(5, 0), (2, 1), (1, 2)]) {
        _ if grpc => Method::POST,
        0 => Method::POST,
        1 => Method::PUT,
        _ => Method::GET,
    };
    let headers = (0..rng.range(0, 3))
        .map(|_| {
            let name = format!("x-stress-{}", rng.range(0, 2));
            (name, format!("v{}", rng.next_u64() % 1000))
        })
        .collect();
    RequestPlan {
        id,
        gap: if later {
            mode.ms(rng.range(if tight { 2_000 } else { 0 }, 10_000))
        } else {
            Duration::ZERO
        },
        grpc,
        method,
        version: if grpc || rng.chance(30) {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        },
        headers,
        own_authorization: rng.chance(10),
        body: BodySpec::generate(rng, cap, mode.ms(2_000)),
        cancel: match rng.pick(&[(14, 0), (3, 1), (3, 2)]) {
            0 => Cancel::Never,
            1 => Cancel::AfterPolls(rng.range(1, 8) as u32),
            _ => Cancel::After(mode.ms(rng.range(10, 5_000))),
        },
        dawdle: rng.chance(10).then(|| mode.ms(rng.range(0, 15_000))),
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keeping = self.callers.iter().filter(|c| c.keeps_service).count();
        write!(
            f,
            "outer {:?}, inner {:?}, {}, cap {} B, replay wait {:?}, {:?}, source {:?}, \
             {} callers ({keeping} keep their service) sending {} requests, {} revocations, \
             refuse-all {:?}, active {:?}",
            self.outer,
            self.inner,
            self.retry,
            self.max_replay_bytes,
            self.replay_wait,
            self.cache,
            self.source.acts,
            self.callers.len(),
            self.requests(),
            self.revocations.len(),
            self.refuse_all,
            self.active,
        )
    }
}
