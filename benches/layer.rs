//! Per-call cost of the layer over a no-op inner service, against tower-http's
//! `AddAuthorization` (a static, sensitive bearer header) in the same run.
//!
//! Run with `cargo bench --bench layer`. Every configuration sees the same request (POST, a
//! 64-byte body, five headers before the `Authorization` header, so no configuration pays for
//! the `HeaderMap` growing at its seventh entry), built outside the timed region.
//!
//! `LAYER_BENCH_HEADERS=6` sends six headers instead, the shape the prototype's figures in
//! DESIGN.md were measured on: the stamped `Authorization` is then the seventh entry, and every
//! configuration that stamps one pays for the map growing.

use std::{
    convert::Infallible,
    future::{Future, Ready, ready},
    hint::black_box,
    pin::pin,
    task::{Context, Poll, Waker},
    time::{Duration, Instant},
};

use besender_auth::{BesenderAuth, BesenderAuthLayer, NoRetry, Token};
use bytes::Bytes;
use criterion::{Criterion, criterion_group};
use http::{Request, Response};
use http_body_util::Full;
use tower::{Layer, Service};
use tower_http::auth::AddAuthorization;

const TOKEN: &str = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIyIn0.c2lnbmF0dXJl";

/// Answers every request at once and drops it. The marker only gives each configuration its
/// own instantiation, so that profilers attribute their costs apart.
#[derive(Clone, Copy, Default)]
struct Noop<M = ()>(std::marker::PhantomData<M>);

#[derive(Clone, Copy, Default)]
struct RetryOn;

#[derive(Clone, Copy, Default)]
struct WithoutRetry;

impl<B, M> Service<Request<B>> for Noop<M> {
    type Response = Response<()>;
    type Error = Infallible;
    type Future = Ready<Result<Response<()>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        drop(black_box(request));
        ready(Ok(Response::new(())))
    }
}

/// With `LAYER_BENCH_HEADERS=6`, the request carries a sixth header (see the module docs).
static SIXTH_HEADER: std::sync::LazyLock<bool> =
    std::sync::LazyLock::new(|| std::env::var("LAYER_BENCH_HEADERS").is_ok_and(|n| n == "6"));

fn request() -> Request<Full<Bytes>> {
    let mut builder = Request::post("http://open.example.com/api/demo?page=1")
        .header("content-type", "application/json")
        .header("accept", "application/json")
        .header("user-agent", "bench/1.0")
        .header("x-request-id", "0123456789abcdef")
        .header("x-tenant", "19");
    if *SIXTH_HEADER {
        builder = builder.header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        );
    }
    builder
        .body(Full::new(Bytes::from_static(&[b'x'; 64])))
        .unwrap()
}

/// `poll_ready`, `call`, and the response future to completion: what a client does per request.
/// Never inlined, so that every configuration runs the same harness code around its service
/// (left to itself, the compiler inlined it into some configurations' loops and not others': a
/// copy of the request and a call more for those).
#[inline(never)]
fn one_call<S, B>(service: &mut S, request: Request<B>) -> Response<()>
where
    S: Service<Request<B>, Response = Response<()>>,
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    // Matched as a client's `ready!(service.poll_ready(cx))?` does: by moving, so a ready
    // service costs no drop of the result.
    match service.poll_ready(&mut cx) {
        Poll::Ready(Ok(())) => {}
        Poll::Ready(Err(err)) => panic!("{err:?}"),
        Poll::Pending => panic!("the bench services are always ready"),
    }
    let mut future = pin!(service.call(request));
    match future.as_mut().poll(&mut cx) {
        Poll::Ready(response) => response.unwrap(),
        Poll::Pending => panic!("the no-op inner service answers at once"),
    }
}

/// Times `iters` calls on requests built beforehand, in batches small enough that building and
/// freeing them disturbs the allocator as little as possible.
fn timed_calls<S>(service: &mut S, iters: u64) -> Duration
where
    S: Service<Request<Full<Bytes>>, Response = Response<()>>,
    S::Error: std::fmt::Debug,
{
    const BATCH: u64 = 128;
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = left.min(BATCH);
        let requests: Vec<_> = (0..n).map(|_| request()).collect();
        let start = Instant::now();
        for request in requests {
            black_box(one_call(service, request));
        }
        total += start.elapsed();
        left -= n;
    }
    total
}

/// The services under test, made ready: a valid token is cached before anything is timed.
struct Subjects {
    _runtime: tokio::runtime::Runtime,
    baseline: AddAuthorization<Noop>,
    retry_off: BesenderAuth<Noop>,
    retry_on: BesenderAuth<Noop<RetryOn>>,
    without_retry: BesenderAuth<Noop<WithoutRetry>, NoRetry>,
}

/// The token is fetched, and the cache's alarms run, on a multi-thread runtime, as in a server
/// or a client on `#[tokio::main]`. With `LAYER_BENCH_CURRENT_THREAD=1`, on a `current_thread`
/// runtime instead, whose timers run only while a caller blocks on it: the layer then reads the
/// clock once per request, so that a token never outlives its time unnoticed.
fn subjects() -> Subjects {
    let runtime = if std::env::var_os("LAYER_BENCH_CURRENT_THREAD").is_some() {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap()
    };
    let layer = BesenderAuthLayer::new(Token::bearer(TOKEN, Duration::from_secs(86_400)));
    {
        let _guard = runtime.enter();
        runtime.block_on(layer.cache().get()).unwrap();
    }
    Subjects {
        baseline: AddAuthorization::bearer(Noop::default(), TOKEN).as_sensitive(true),
        retry_off: layer.clone().retry(false).layer(Noop::default()),
        without_retry: layer.clone().without_retry().layer(Noop::default()),
        retry_on: layer.layer(Noop::default()),
        _runtime: runtime,
    }
}

fn per_call(c: &mut Criterion) {
    let mut s = subjects();
    let mut group = c.benchmark_group("per_call");
    group.bench_function("bare no-op", |b| {
        b.iter_custom(|iters| timed_calls(&mut Noop::<()>::default(), iters))
    });
    group.bench_function("tower-http AddAuthorization (baseline)", |b| {
        b.iter_custom(|iters| timed_calls(&mut s.baseline, iters))
    });
    group.bench_function("BesenderAuth without_retry", |b| {
        b.iter_custom(|iters| timed_calls(&mut s.without_retry, iters))
    });
    group.bench_function("BesenderAuth retry(false)", |b| {
        b.iter_custom(|iters| timed_calls(&mut s.retry_off, iters))
    });
    group.bench_function("BesenderAuth retry on", |b| {
        b.iter_custom(|iters| timed_calls(&mut s.retry_on, iters))
    });
    group.finish();
}

/// Ratios that machine drift cannot skew: rounds that time every configuration back to back,
/// the ratio taken within each round, and the median over rounds reported.
fn paired_ratios() {
    const ROUNDS: usize = 15;
    const CALLS: u64 = 40_000;
    const NAMES: [&str; 3] = ["without_retry()", "retry(false)", "retry on"];
    let mut s = subjects();
    let mut ratios: [Vec<f64>; 3] = Default::default();
    let mut base_ns = Vec::with_capacity(ROUNDS);
    for round in 0..ROUNDS {
        // Alternate the order, so that no configuration always runs first.
        let mut times = [Duration::ZERO; 4];
        let mut run = |i: usize| {
            times[i] = match i {
                0 => timed_calls(&mut s.baseline, CALLS),
                1 => timed_calls(&mut s.without_retry, CALLS),
                2 => timed_calls(&mut s.retry_off, CALLS),
                _ => timed_calls(&mut s.retry_on, CALLS),
            }
        };
        if round % 2 == 0 {
            (0..4).for_each(&mut run);
        } else {
            (0..4).rev().for_each(&mut run);
        }
        base_ns.push(times[0].as_nanos() as f64 / CALLS as f64);
        for (ratio, time) in ratios.iter_mut().zip(&times[1..]) {
            ratio.push(time.as_secs_f64() / times[0].as_secs_f64());
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let headers = if *SIXTH_HEADER { 6 } else { 5 };
    println!(
        "\nper_call paired ratios vs AddAuthorization ({ROUNDS} interleaved rounds of {CALLS} calls, {headers} headers):"
    );
    println!("  baseline median: {:.1} ns/call", median(&mut base_ns));
    for (name, ratio) in NAMES.iter().zip(&mut ratios) {
        println!("  {name:<16} median {:.3}x", median(ratio));
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(40);
    targets = per_call
}

/// One configuration's calls, in a function of its own so that callgrind attributes them.
macro_rules! counted {
    ($name:ident) => {
        #[inline(never)]
        fn $name<S>(service: &mut S, requests: Vec<Request<Full<Bytes>>>)
        where
            S: Service<Request<Full<Bytes>>, Response = Response<()>>,
            S::Error: std::fmt::Debug,
        {
            black_box(stringify!($name));
            for request in requests {
                black_box(one_call(service, request));
            }
        }
    };
}
counted!(calls_bare);
counted!(calls_add_authorization);
counted!(calls_retry_off);
counted!(calls_retry_on);
counted!(calls_without_retry);

/// With `LAYER_BENCH_INSTRUCTIONS=1`: 10,000 calls of each configuration and nothing else, for
/// `valgrind --tool=callgrind`, whose instruction counts (unlike times) repeat exactly. With
/// `LAYER_BENCH_INSTRUCTIONS=<rounds>` (more than 1), that many rounds, for a sampling profiler
/// (`perf record`): each configuration's time is then its `calls_*` function's inclusive share.
fn instruction_counts(rounds: usize) {
    // Batches as small as the timed runs use, so that a profile sees the same cache behaviour.
    const BATCH: usize = 128;
    const N: usize = 10_000;
    let mut s = subjects();
    let batches = || {
        (0..N.div_ceil(BATCH)).map(|b| (0..BATCH.min(N - b * BATCH)).map(|_| request()).collect())
    };
    for _ in 0..rounds {
        batches().for_each(|r| calls_bare(&mut Noop::<()>::default(), r));
        batches().for_each(|r| calls_add_authorization(&mut s.baseline, r));
        batches().for_each(|r| calls_retry_off(&mut s.retry_off, r));
        batches().for_each(|r| calls_retry_on(&mut s.retry_on, r));
        batches().for_each(|r| calls_without_retry(&mut s.without_retry, r));
    }
}

fn main() {
    if let Some(rounds) = std::env::var_os("LAYER_BENCH_INSTRUCTIONS") {
        let rounds = rounds.to_str().and_then(|r| r.parse().ok()).unwrap_or(1);
        return instruction_counts(rounds);
    }
    if std::env::var_os("LAYER_BENCH_PAIRED").is_some() {
        // The interleaved ratios alone (a few seconds), for comparing changes quickly.
        return paired_ratios();
    }
    benches();
    paired_ratios();
    Criterion::default().configure_from_args().final_summary();
}
