//! Inner capacity is never held for a token (ANCHORS "Readiness"), even where Tower gives it to
//! a service that stopped asking: a `ConcurrencyLimit` under the layer grants the permit a
//! `Pending` poll queued for when another call ends, whether or not the layer polls it again.
//! A service waiting for a token, or failing a call for want of one, gives such a permit back.
//! On Tokio's paused clock.

use std::{
    future::Future,
    pin::Pin,
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
use tower::{BoxError, Layer, Service, ServiceExt, limit::ConcurrencyLimit};

type Body = Empty<Bytes>;

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

/// Tokens `t1`, `t2`, ...; fetch number `failing` fails after 1 s, fetch number `slow` takes 10 s.
fn source(failing: u64, slow: u64) -> BesenderAuthLayer {
    let calls = Arc::new(AtomicU64::new(0));
    BesenderAuthLayer::new(move || {
        let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            if n == failing {
                tokio::time::sleep(Duration::from_secs(1)).await;
                return Err::<Token, BoxError>("token endpoint down".into());
            }
            if n == slow {
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
            Ok(Token::bearer(format!("t{n}"), Duration::from_secs(3600)))
        }
    })
}

/// Found by a randomized stress test. A call that fails for want of a token, on a service
/// whose inner `ConcurrencyLimit` had been granted its queued permit meanwhile, kept that
/// permit while its caller sat idle: no other clone became ready.
#[tokio::test(start_paused = true)]
async fn a_call_failing_for_want_of_a_token_gives_back_the_inner_permit() {
    let layer = source(2, 0);
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
    let layer = source(0, 2);
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
    let t1 = layer.cache().get().await.unwrap();
    assert!(layer.cache().invalidate(&t1));
    // A's call ends at 2 s: its permit goes to B's queued poll, while B waits for the token.
    assert_eq!(slow.await.unwrap().unwrap().status(), StatusCode::OK);

    // The permit is free during B's wait: another user of the same limit gets it at once.
    let mut other = limited.clone();
    tokio::time::timeout(Duration::from_secs(1), other.ready())
        .await
        .expect("B holds the permit while it waits for a token")
        .unwrap();
    drop(other);
    // And B, once the token is there, gets a permit of its own and sends with t2.
    let mut b = b_ready.await.unwrap();
    assert_eq!(b.call(get()).await.unwrap().status(), StatusCode::OK);
}
