//! The cache and the layer where the runtime is odd: none at all, one without timers, one per
//! call (a synchronous wrapper), and a refresh stranded on a runtime nobody drives any more.
//! Never a panic, never a hang, never a token call per request.

use std::{
    convert::Infallible,
    future::{Future, ready},
    pin::pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll, Wake, Waker},
    thread,
    time::Duration,
};

use besender_auth::{
    BesenderAuthLayer, Error, ReplayBody, Token, TokenCache, TokenCacheBuilder, TokenErrorKind,
    TokenSource,
};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Empty;
use tokio::runtime::Runtime;
use tower::{Layer, Service, ServiceExt, service_fn};

/// Polls `future` to completion on this thread, with no Tokio context at all (as
/// `futures::executor::block_on` would).
fn block_on_without_tokio<F: Future>(future: F) -> F::Output {
    struct Unpark(thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        thread::park_timeout(Duration::from_millis(10));
    }
}

/// A source whose every call is counted and takes `takes`; tokens named `token-<n>`.
fn counting_source(takes: Duration, lifetime: Duration) -> (impl TokenSource, Arc<AtomicU64>) {
    let calls = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&calls);
    let source = move || {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            tokio::time::sleep(takes).await;
            Ok::<_, Infallible>(Token::bearer(format!("token-{n}"), lifetime))
        }
    };
    (source, calls)
}

fn multi_thread() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

fn current_thread() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A paused `current_thread` runtime whose clock is `by` later than now: time that passed
/// while the runtimes made before it were not driven, so none of their timers ran.
fn paused_runtime_later(by: Duration) -> Runtime {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(tokio::time::advance(by));
    runtime
}

/// A cache whose tokens are usable for their whole lifetime and refreshed from half-way, with
/// no jitter: the instants the tests name are the instants the cache acts.
fn refresh_from_half_way(source: impl TokenSource) -> TokenCacheBuilder {
    TokenCache::builder(source)
        .expiry_margin(Duration::ZERO)
        .refresh_window(0.5, Duration::ZERO)
        .refresh_jitter(0.0)
}

type Inner = tower::util::ServiceFn<
    fn(Request<ReplayBody<Empty<Bytes>>>) -> std::future::Ready<Result<Response<()>, Infallible>>,
>;

fn answering() -> Inner {
    service_fn(|_request| ready(Ok(Response::new(()))))
}

fn get() -> Request<Empty<Bytes>> {
    Request::get("http://api.example/")
        .body(Empty::new())
        .unwrap()
}

/// A caller with no runtime, while a fetch runs on another runtime: it cannot wait on a timer
/// of its own, so it gets `NoRuntime`, as it does when no fetch runs (it used to panic in
/// Tokio's timer). Then, with the token there, it is served.
#[test]
fn a_caller_without_a_runtime_gets_an_error_while_a_fetch_runs_elsewhere() {
    // The fetch runs until the test lets it finish.
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let calls = Arc::new(AtomicU64::new(0));
    let source = {
        let (gate, calls) = (Arc::clone(&gate), Arc::clone(&calls));
        move || {
            calls.fetch_add(1, Ordering::SeqCst);
            let gate = Arc::clone(&gate);
            async move {
                let _open = gate.acquire().await;
                Ok::<_, Infallible>(Token::bearer("token", Duration::from_secs(3600)))
            }
        }
    };
    let layer = BesenderAuthLayer::new(source);
    let cache = layer.cache().clone();
    let main = multi_thread();
    let fetching = main.spawn({
        let cache = cache.clone();
        async move { cache.get().await }
    });
    while calls.load(Ordering::SeqCst) == 0 {
        thread::sleep(Duration::from_millis(5));
    }

    let err = block_on_without_tokio(cache.get()).expect_err("no runtime to wait on");
    assert!(matches!(err.kind(), TokenErrorKind::NoRuntime), "{err}");
    let mut service = layer.layer(answering());
    let err = block_on_without_tokio(async {
        ServiceExt::<Request<Empty<Bytes>>>::ready(&mut service)
            .await
            .unwrap()
            .call(get())
            .await
    })
    .expect_err("no token to stamp");
    assert!(
        matches!(&err, Error::Token(e) if matches!(e.kind(), TokenErrorKind::NoRuntime)),
        "{err}"
    );

    gate.add_permits(1);
    main.block_on(fetching).unwrap().unwrap();
    assert!(
        block_on_without_tokio(cache.get()).is_ok(),
        "served from the cache"
    );
    let response = block_on_without_tokio(service.oneshot(get()));
    assert!(response.is_ok());
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

/// A service began waiting for a fetch (running on the application's runtime) on a runtime of
/// its own call, which gave up and was dropped; the next call, on a new runtime, polls the same
/// service. Its wait must not use the timer of the runtime that is gone (that panicked).
#[test]
fn a_wait_begun_on_a_runtime_since_dropped_goes_on_on_the_next() {
    let (source, calls) = counting_source(Duration::from_millis(300), Duration::from_secs(3600));
    let layer = BesenderAuthLayer::new(source);
    let mut service = layer.layer(answering());
    let main = multi_thread();
    let cache = layer.cache().clone();
    main.spawn(async move { cache.get().await });
    while calls.load(Ordering::SeqCst) == 0 {
        thread::sleep(Duration::from_millis(5));
    }

    let per_call = current_thread();
    let gave_up = per_call.block_on(async {
        let ready = ServiceExt::<Request<Empty<Bytes>>>::ready(&mut service);
        tokio::time::timeout(Duration::from_millis(10), ready).await
    });
    assert!(gave_up.is_err(), "the fetch takes 300 ms");
    drop(per_call);

    let next = current_thread();
    let response = next.block_on(async {
        let ready = ServiceExt::<Request<Empty<Bytes>>>::ready(&mut service);
        let service = tokio::time::timeout(Duration::from_secs(20), ready)
            .await
            .expect("the wait hung")
            .unwrap();
        service.call(get()).await
    });
    assert!(response.is_ok());
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the running fetch served it"
    );
}

/// A refresh ahead started on a runtime that then sits idle stalls. Readers on another runtime
/// must give it up once it counts as stalled and start another, well before the token runs
/// out: they used to serve the token with no refresh coming until it ran out, and then wait.
#[test]
fn a_refresh_ahead_stranded_on_an_idle_runtime_is_replaced_before_the_token_runs_out() {
    const LIFETIME: Duration = Duration::from_secs(60);
    let (source, calls) = counting_source(Duration::from_millis(10), LIFETIME);
    // Usable for all 60 s; refresh from 30 s; a fetch counts as stalled 3 s after it starts.
    let cache = refresh_from_half_way(source)
        .fetch_timeout(Duration::from_secs(2))
        .build();
    let first = paused_runtime_later(Duration::ZERO);
    let token = first.block_on(cache.get()).unwrap();

    // At 31 s a reader starts the refresh on `second`, which nobody drives afterwards.
    let second = paused_runtime_later(Duration::from_secs(31));
    let header = second.block_on(async { cache.cached_header() });
    assert_eq!(header.unwrap(), token.header_value().unwrap());
    assert_eq!(cache.stats().fetches, 2, "the refresh ahead started");

    // At 36 s, past the stall, a reader on `third` replaces it; `third` runs the new fetch.
    let third = paused_runtime_later(Duration::from_secs(36));
    third.block_on(async {
        assert!(cache.cached_header().is_some());
        tokio::time::sleep(Duration::from_millis(50)).await;
    });
    assert_eq!(cache.stats().fetches, 3, "{:?}", cache.stats());
    let fresh = third.block_on(cache.get()).unwrap();
    assert!(!fresh.same_token(&token), "the refreshed token is served");
    // The stranded task never ran: two source calls in all.
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

/// A synchronous wrapper that makes a runtime per call cancels every refresh ahead it starts
/// (the runtime, and the fetch's task with it, is dropped when the call returns). The token is
/// still good, so that must not make every request in the refresh window call the source.
#[test]
fn a_runtime_per_call_does_not_call_the_source_once_per_request() {
    const LIFETIME: Duration = Duration::from_secs(60);
    let (source, calls) = counting_source(Duration::from_millis(100), LIFETIME);
    let cache = refresh_from_half_way(source).build();
    // Each request does 5 ms of its own I/O: long enough for the refresh's task to start.
    let inner = service_fn(|_request: Request<ReplayBody<Empty<Bytes>>>| async {
        tokio::time::sleep(Duration::from_millis(5)).await;
        Ok::<_, Infallible>(Response::new(()))
    });
    let service = BesenderAuthLayer::from_cache(cache.clone()).layer(inner);
    let request_at = |seconds: u64| {
        let runtime = paused_runtime_later(Duration::from_secs(seconds));
        runtime.block_on(service.clone().oneshot(get())).unwrap();
    };
    request_at(0);
    // Twenty requests in the refresh window, a second apart, each on a runtime of its own.
    for second in 31..51 {
        request_at(second);
    }
    let refresh_calls = calls.load(Ordering::SeqCst) - 1;
    assert!(
        (1..=3).contains(&refresh_calls),
        "{refresh_calls} token calls for 20 requests in the refresh window"
    );
    // Past the token's usable time a request waits for its fetch, on its own runtime.
    request_at(61);
    assert_eq!(calls.load(Ordering::SeqCst), refresh_calls + 2);
}

/// A refresh ahead that failed once left its error behind; the next was cancelled with its
/// runtime; then the token was refused and its forced refresh cancelled too. The endpoint has
/// been fine for seconds, so the next caller must fetch, not be served the old error until the
/// cancelled refresh's wait (half the token's remaining time) is over.
#[test]
fn a_cancelled_refresh_never_makes_an_old_error_held_after_the_token_is_evicted() {
    const LIFETIME: Duration = Duration::from_secs(60);
    let calls = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&calls);
    let source = move || {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            match n {
                2 => Err(std::io::Error::other("blip")),
                3 => {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    Ok(Token::bearer(format!("token-{n}"), LIFETIME))
                }
                _ => Ok(Token::bearer(format!("token-{n}"), LIFETIME)),
            }
        }
    };
    let cache = refresh_from_half_way(source).build();
    let token = paused_runtime_later(Duration::ZERO)
        .block_on(cache.get())
        .unwrap();
    // 31 s: the refresh ahead fails (backoff about a second).
    paused_runtime_later(Duration::from_secs(31)).block_on(async {
        cache.get().await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    });
    assert_eq!(cache.stats().failed_fetches, 1);
    // 35 s: the next refresh ahead is cancelled with its runtime.
    paused_runtime_later(Duration::from_secs(35)).block_on(async {
        cache.get().await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    });
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    // 36 s: refused; the forced refresh's runtime is gone before it runs.
    assert!(
        paused_runtime_later(Duration::from_secs(36)).block_on(async { cache.invalidate(&token) })
    );
    // 40 s: a caller gets a token.
    let got = paused_runtime_later(Duration::from_secs(40)).block_on(cache.get());
    assert!(
        got.is_ok(),
        "an old error was held: {:?}; {:?}",
        got.err().map(|e| e.to_string()),
        cache.stats()
    );
}

/// A source that blocks its thread (a blocking call inside `async`) cannot notice its own
/// deadline; a waiter on the same multi-thread runtime still gives up when the fetch counts as
/// stalled, on its own timer, which another worker drives.
#[test]
fn a_waiter_gives_up_on_a_source_that_blocks_its_thread() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let cache = TokenCache::builder(|| async {
        thread::sleep(Duration::from_secs(3));
        Ok::<_, Infallible>(Token::bearer("token", Duration::from_secs(3600)))
    })
    .fetch_timeout(Duration::from_millis(200))
    .build();
    let err = runtime
        .block_on(cache.get())
        .expect_err("given up at the stall, 1.2 s in, not served 3 s in");
    assert!(
        matches!(err.kind(), TokenErrorKind::Timeout { .. }),
        "{err}"
    );
}
