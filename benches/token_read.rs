//! Reading a valid token: the value the layer stamps on every request.
//!
//! Compares `TokenCache::cached_header` with three lock-based caches of the same token, from
//! one thread and from two OS threads started together. Run with
//! `cargo bench --bench token_read`; compare ratios within one run, not absolute times.

use std::{
    future::Future,
    hint::black_box,
    pin::pin,
    sync::{Arc, Barrier, Mutex, RwLock},
    task::{Context, Poll, Wake, Waker},
    thread,
    time::{Duration, Instant},
};

use besender_auth::{Token, TokenCache};
use criterion::{Criterion, criterion_group, criterion_main};
use http::HeaderValue;

struct Unpark(thread::Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

thread_local! {
    static WAKER: Waker = Waker::from(Arc::new(Unpark(thread::current())));
}

/// A minimal executor for the tokio Mutex baseline: polls, parks the thread while pending.
/// The waker is made once per thread and borrowed, so an uncontended lock costs nothing extra.
fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    WAKER.with(|waker| {
        let mut cx = Context::from_waker(waker);
        loop {
            if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
                return output;
            }
            thread::park();
        }
    })
}

/// One way of reading the current header value.
trait Reader: Clone + Send + 'static {
    fn read(&self) -> HeaderValue;
}

#[derive(Clone)]
struct Ours(TokenCache);
impl Reader for Ours {
    fn read(&self) -> HeaderValue {
        self.0.cached_header().expect("a valid token is cached")
    }
}

#[derive(Clone)]
struct TokioMutex(Arc<tokio::sync::Mutex<Option<Token>>>);
impl Reader for TokioMutex {
    fn read(&self) -> HeaderValue {
        block_on(async {
            let guard = self.0.lock().await;
            guard.as_ref().unwrap().header_value().unwrap().clone()
        })
    }
}

#[derive(Clone)]
struct StdRwLock(Arc<RwLock<Option<Token>>>);
impl Reader for StdRwLock {
    fn read(&self) -> HeaderValue {
        let guard = self.0.read().unwrap();
        guard.as_ref().unwrap().header_value().unwrap().clone()
    }
}

#[derive(Clone)]
struct StdMutex(Arc<Mutex<Option<Token>>>);
impl Reader for StdMutex {
    fn read(&self) -> HeaderValue {
        let guard = self.0.lock().unwrap();
        guard.as_ref().unwrap().header_value().unwrap().clone()
    }
}

/// Wall time for each of `threads` threads, started together, to make `iters` reads.
fn timed_reads<R: Reader>(reader: &R, threads: usize, iters: u64) -> Duration {
    let barrier = Arc::new(Barrier::new(threads + 1));
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let reader = reader.clone();
            let barrier = Arc::clone(&barrier);
            thread::spawn(move || {
                black_box(reader.read()); // this thread's first read
                barrier.wait();
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(reader.read());
                }
                start.elapsed()
            })
        })
        .collect();
    barrier.wait();
    workers
        .into_iter()
        .map(|w| w.join().unwrap())
        .max()
        .unwrap()
}

fn token_read(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    // A realistic Besender token: a ~1.2 KB JWT.
    let jwt = format!(
        "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.{}.sig",
        "x".repeat(1200)
    );
    let token = Token::bearer(&jwt, Duration::from_secs(86_400));
    let cache = TokenCache::new(token.clone());
    runtime.block_on(cache.get()).unwrap();

    let ours = Ours(cache);
    let tokio_mutex = TokioMutex(Arc::new(tokio::sync::Mutex::new(Some(token.clone()))));
    let rwlock = StdRwLock(Arc::new(RwLock::new(Some(token.clone()))));
    let mutex = StdMutex(Arc::new(Mutex::new(Some(token))));

    for threads in [1, 2] {
        let mut group = c.benchmark_group(format!("token_read/{threads}_thread"));
        group.bench_function("besender_auth TokenCache", |b| {
            b.iter_custom(|iters| timed_reads(&ours, threads, iters))
        });
        group.bench_function("tokio::sync::Mutex", |b| {
            b.iter_custom(|iters| timed_reads(&tokio_mutex, threads, iters))
        });
        group.bench_function("std::sync::RwLock", |b| {
            b.iter_custom(|iters| timed_reads(&rwlock, threads, iters))
        });
        group.bench_function("std::sync::Mutex", |b| {
            b.iter_custom(|iters| timed_reads(&mutex, threads, iters))
        });
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30);
    targets = token_read
}
criterion_main!(benches);
