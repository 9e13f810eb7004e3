//! Inner capacity is never held for a token (ANCHORS "Readiness"), even where Tower gives it to
//! a service that stopped asking: a `ConcurrencyLimit` under the layer grants the permit a
//! `Pending` poll queued for when another call ends, whether or not the layer polls it again.
//! A service waiting for a token, or failing a call for want of one, gives such a permit back.
//! On Tokio's paused clock.

use std::{
    future::Future,
    pin::{Pin, pin},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use besender_auth::{BesenderAuthLayer, Error, ReplayBody, Token};
use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Empty;
use tower::{
    BoxError, Layer, Service, ServiceExt, buffer::Buffer, limit::ConcurrencyLimit, steer::Steer,
};

type Body = Empty<Bytes>;
type Req = Request<ReplayBody<Body>>;

/// Refuses the token it is given with 401; answers after 2 s to requests marked `x-slow`.
#[derive(Clone)]
struct Api(&'static str);

impl Service<Request<ReplayBody<Body>>> for Api {
    type Response = Response<()>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<()>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<ReplayBody<Body>>) -> Self::Future {
        let refused = request.headers()[header::AUTHORIZATION] == format!("Bearer {}", self.0);
        let slow = request.headers().contains_key("x-slow");
        Box::pin(async move {
            if slow {
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            let mut response = Response::new(());
            if refused {
                *response.status_mut() = StatusCode::UNAUTHORIZED;
            }
            Ok(response)
        })
    }
}

fn get() -> Request<Body> {
    Request::get("http://127.0.0.1/")
        .body(Empty::new())
        .unwrap()
}

fn slow_get() -> Request<Body> {
    Request::get("http://127.0.0.1/")
        .header("x-slow", "1")
        .body(Empty::new())
        .unwrap()
}

const HOUR: Duration = Duration::from_secs(3600);

fn never(_: u64) -> bool {
    false
}

/// Tokens `t1`, `t2`, ... of `lifetime`: fetch number `slow` takes 10 s, and the fetches for
/// which `fails` says so fail after 1 s.
fn source(slow: u64, fails: fn(u64) -> bool, lifetime: Duration) -> BesenderAuthLayer {
    let calls = Arc::new(AtomicU64::new(0));
    BesenderAuthLayer::new(move || {
        let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            if fails(n) {
                tokio::time::sleep(Duration::from_secs(1)).await;
                return Err::<Token, BoxError>("token endpoint down".into());
            }
            if n == slow {
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
            Ok(Token::bearer(format!("t{n}"), lifetime))
        }
    })
}

/// Revokes the token the cache serves (a refusal elsewhere would): the next one is fetched.
async fn revoke(layer: &BesenderAuthLayer) {
    let token = layer.cache().get().await.unwrap();
    assert!(layer.cache().invalidate(&token));
}

/// Another user of the same capacity gets it at once (and lets it go): nothing holds it.
async fn assert_free<S: Service<Req>>(mut other: S, holder: &str)
where
    S::Error: std::fmt::Debug,
{
    tokio::time::timeout(Duration::from_secs(1), other.ready())
        .await
        .unwrap_or_else(|_| panic!("{holder}"))
        .unwrap();
}

/// Found by a randomized stress test. A call that fails for want of a token, on a service
/// whose inner `ConcurrencyLimit` had been granted its queued permit meanwhile, kept that
/// permit while its caller sat idle: no other clone became ready.
#[tokio::test(start_paused = true)]
async fn a_call_failing_for_want_of_a_token_gives_back_the_inner_permit() {
    let layer = source(0, |n| n == 2, HOUR);
    let service = layer.layer(ConcurrencyLimit::new(Api("t1"), 1));

    // A takes the only permit for a request that will be refused (t1).
    let mut a = service.clone();
    a.ready().await.unwrap();
    let refused = a.call(get());
    // B has the token; its inner service is Pending for A's permit.
    let mut b = service.clone();
    let mut cx = Context::from_waker(std::task::Waker::noop());
    assert!(b.poll_ready(&mut cx).is_pending());

    // A's refusal evicts t1 and the forced refresh fails; A's permit goes to B's queued poll.
    assert_eq!(refused.await.unwrap().status(), StatusCode::UNAUTHORIZED);
    // B: ready (no token), then its call fails without reaching the inner service.
    b.ready().await.unwrap();
    let err = b.call(get()).await.unwrap_err();
    assert!(matches!(err, Error::Token(_)), "{err}");

    // With B idle, another clone gets the permit, once the backoff lets a fetch run again.
    tokio::time::sleep(Duration::from_secs(60)).await;
    let mut c = service.clone();
    tokio::time::timeout(Duration::from_secs(60), c.ready())
        .await
        .expect("the idle clone B still holds the only permit")
        .unwrap();
    assert_eq!(c.call(get()).await.unwrap().status(), StatusCode::OK);
    drop(b);
}

/// A service whose token runs out after its inner service was polled gives back what that
/// service holds while the fresh token comes: here a permit granted to its queued poll while
/// it waits for a 10 s fetch.
#[tokio::test(start_paused = true)]
async fn no_inner_permit_is_held_while_a_service_waits_for_a_fresh_token() {
    let layer = source(2, never, HOUR);
    let limited = ConcurrencyLimit::new(Api("none"), 1);
    let service = layer.layer(limited.clone());

    // A holds the only permit for 2 s; B has the token (t1), its inner service is Pending.
    let mut a = service.clone();
    a.ready().await.unwrap();
    let slow = tokio::spawn(a.call(slow_get()));
    let mut b = service.clone();
    let b_ready = tokio::spawn(async move {
        b.ready().await.unwrap();
        b
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    // t1 is revoked (a refusal elsewhere): the fresh token takes 10 s.
    revoke(&layer).await;
    // A's call ends at 2 s: its permit goes to B's queued poll, while B waits for the token.
    assert_eq!(slow.await.unwrap().unwrap().status(), StatusCode::OK);

    // The permit is free during B's wait: another user of the same limit gets it at once.
    assert_free(
        limited.clone(),
        "B holds the permit while it waits for a token",
    )
    .await;
    // And B, once the token is there, gets a permit of its own and sends with t2.
    let mut b = b_ready.await.unwrap();
    assert_eq!(b.call(get()).await.unwrap().status(), StatusCode::OK);
}

/// A ready service whose token is revoked gives back its permit while the fresh one comes.
#[tokio::test(start_paused = true)]
async fn a_ready_service_gives_back_its_permit_while_it_waits_for_a_token() {
    let layer = source(2, never, HOUR);
    let limited = ConcurrencyLimit::new(Api("none"), 1);
    let mut a = layer.layer(limited.clone());
    a.ready().await.unwrap(); // holds the permit
    revoke(&layer).await;
    let mut cx = Context::from_waker(std::task::Waker::noop());
    assert!(a.poll_ready(&mut cx).is_pending());
    assert_free(
        limited.clone(),
        "A holds the permit while it waits for a token",
    )
    .await;
    a.ready().await.unwrap();
    assert_eq!(a.call(get()).await.unwrap().status(), StatusCode::OK);
}

/// The same with a `Buffer` of one slot under the layer; the waiting service is woken by its
/// token wait, not by the slot it gave back.
#[tokio::test(start_paused = true)]
async fn a_ready_service_gives_back_its_buffer_slot_while_it_waits_for_a_token() {
    let layer = source(2, never, HOUR);
    let buffer = Buffer::new(Api("none"), 1);
    let mut a = layer.layer(buffer.clone());
    a.ready().await.unwrap(); // holds the slot
    revoke(&layer).await;
    let waiting = tokio::spawn(async move {
        a.ready().await.unwrap(); // 10 s, for t2
        a
    });
    tokio::task::yield_now().await;
    assert_free(
        buffer.clone(),
        "A holds the slot while it waits for a token",
    )
    .await;
    let mut a = tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .expect("lost wakeup")
        .unwrap();
    assert_eq!(a.call(get()).await.unwrap().status(), StatusCode::OK);
}

/// A call that finds its token past its time, and no fresh one, gives back its permit.
#[tokio::test(start_paused = true)]
async fn a_call_that_cannot_renew_its_token_gives_back_its_permit() {
    let layer = source(0, |n| n >= 2, Duration::from_secs(600));
    let limited = ConcurrencyLimit::new(Api("none"), 1);
    let mut a = layer.layer(limited.clone());
    a.ready().await.unwrap(); // t1, holds the permit
    tokio::time::sleep(HOUR).await; // t1 is dead, its refreshes failed
    let err = a.call(get()).await.unwrap_err();
    assert!(matches!(err, Error::Token(_)), "{err}");
    assert_free(
        limited.clone(),
        "A holds the permit after its call failed for want of a token",
    )
    .await;
}

fn first_route(_: &Req, _: &[ConcurrencyLimit<Api>]) -> usize {
    0
}

type Routes = Steer<ConcurrencyLimit<Api>, fn(&Req, &[ConcurrencyLimit<Api>]) -> usize, Req>;

fn routes(refuse: &'static str) -> Routes {
    Steer::new(vec![ConcurrencyLimit::new(Api(refuse), 1)], first_route)
}

/// A clone of a ready `Steer` says it is ready without polling its routes (it copies its
/// readiness), and calling it panics in the route's `ConcurrencyLimit`. The service that gives
/// back its capacity while it waits for a token takes a clone of the never-polled service the
/// layer wrapped instead.
#[tokio::test(start_paused = true)]
async fn a_steer_under_the_layer_survives_a_token_wait() {
    let layer = source(2, never, HOUR);
    let mut a = layer.layer(routes("none"));
    a.ready().await.unwrap();
    revoke(&layer).await;
    let mut cx = Context::from_waker(std::task::Waker::noop());
    assert!(a.poll_ready(&mut cx).is_pending());
    a.ready().await.unwrap();
    assert_eq!(a.call(get()).await.unwrap().status(), StatusCode::OK);
}

/// The same for a retry: it runs on a clone of the never-polled service, not of the ready one
/// that served the first attempt.
#[tokio::test(start_paused = true)]
async fn a_steer_under_the_layer_survives_a_retry() {
    let layer = source(0, never, HOUR);
    let mut a = layer.layer(routes("t1"));
    a.ready().await.unwrap();
    let response = a.call(get()).await.unwrap(); // t1 refused, retried with t2
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(layer.stats().successful_retries, 1);
}

/// Found by the randomized stress test (seed 1571): a `Buffer` above the layer and a
/// `ConcurrencyLimit` of one below it. A's request holds the permit; the worker's service has
/// the token and queues for that permit for B's request, whose caller then gives up. When A's
/// answer (a refusal) comes, its permit goes to the worker's queued poll, and the worker keeps
/// it until its next request: A's retry, on a fresh clone, would wait for a permit forever.
/// It waits `retry_ready_wait`, then returns the refusal; the stack then works on.
#[tokio::test(start_paused = true)]
async fn a_retry_whose_inner_capacity_never_comes_returns_the_refusal_in_time() {
    let layer = source(0, never, HOUR).retry_ready_wait(Duration::from_secs(5));
    let buffer = Buffer::new(layer.layer(ConcurrencyLimit::new(Api("t1"), 1)), 4);
    let start = tokio::time::Instant::now();
    // A: refused (t1), after 2 s holding the only permit.
    let a = tokio::spawn(buffer.clone().oneshot(slow_get()));
    tokio::time::sleep(Duration::from_millis(100)).await;
    // B: the worker's service queues for A's permit; B's caller gives up.
    let b = tokio::time::timeout(Duration::from_millis(100), buffer.clone().oneshot(get())).await;
    assert!(b.is_err(), "B did not wait for the permit");

    let refused = tokio::time::timeout(Duration::from_secs(600), a)
        .await
        .expect("the retry waited for a permit that never came")
        .unwrap()
        .unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(7) && waited < Duration::from_secs(8),
        "refused at 2 s, then 5 s for the retry's permit: {waited:?}"
    );
    let stats = layer.stats();
    assert_eq!((stats.retries, stats.refused_replays), (0, 1));

    // The worker's next request finds its token refused: its service gives the kept permit
    // back while it takes the fresh token, then gets a permit and sends.
    let c = tokio::time::timeout(Duration::from_secs(60), buffer.clone().oneshot(get()))
        .await
        .expect("the permit kept by the worker's service was not given back")
        .unwrap();
    assert_eq!(c.status(), StatusCode::OK);
}

/// A's request (refused: `t1`) holds the only permit for 2 s; a holder is granted it next and
/// keeps it for `hold`, while A's retry waits for it. Returns A's status and when it came. If
/// the retry gave up, it first checks that A's finished future, kept, holds nothing: with the
/// holder gone, another user gets the permit at once. (A future that returned the inner
/// service's response keeps the inner future, and with it the permit tower's
/// `ConcurrencyLimit` releases when that future is dropped: as without the layer.)
async fn retry_behind_a_holder(
    layer: &BesenderAuthLayer,
    hold: Duration,
) -> (StatusCode, Duration) {
    let limited = ConcurrencyLimit::new(Api("t1"), 1);
    let mut a = layer.layer(limited.clone());
    let start = tokio::time::Instant::now();
    a.ready().await.unwrap();
    let mut refused = pin!(a.call(slow_get()));
    let mut holder = limited.clone();
    let holder = tokio::spawn(async move {
        holder.ready().await.unwrap();
        tokio::time::sleep(hold).await;
    });
    let response = tokio::time::timeout(Duration::from_secs(600), refused.as_mut())
        .await
        .expect("the retry waited for capacity without end")
        .unwrap();
    let at = start.elapsed();
    holder.await.unwrap();
    if response.status() == StatusCode::UNAUTHORIZED {
        assert_free(limited, "A's finished future keeps a permit").await;
    }
    (response.status(), at)
}

/// With the default settings, a retry waits for inner capacity like any request, but at most
/// 30 s: a permit freed 20 s after the refusal serves the retry; one freed 40 s after it comes
/// too late, and the refusal is returned at 30 s.
#[tokio::test(start_paused = true)]
async fn by_default_a_retry_waits_up_to_30_s_for_inner_capacity() {
    let layer = source(0, never, HOUR);
    let (status, at) = retry_behind_a_holder(&layer, Duration::from_secs(20)).await;
    assert_eq!(status, StatusCode::OK);
    // Refused at 2 s, the permit at 22 s, and the retry is as slow as the first attempt.
    assert!(
        at >= Duration::from_secs(24) && at < Duration::from_secs(25),
        "{at:?}"
    );
    assert_eq!(layer.stats().successful_retries, 1);

    let layer = source(0, never, HOUR);
    let (status, at) = retry_behind_a_holder(&layer, Duration::from_secs(40)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        at >= Duration::from_secs(32) && at < Duration::from_secs(33),
        "{at:?}"
    );
    let stats = layer.stats();
    assert_eq!((stats.retries, stats.refused_replays), (0, 1));
}
