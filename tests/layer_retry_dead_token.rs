//! A retry never sends a token known to be dead (README, "never a dead token"), however long
//! its fresh clone of the inner service took to be ready. Found while writing the randomized
//! stress test (`layer_stress`): the retry got its fresh token, waited for the clone (here a
//! `ConcurrencyLimit` under the layer, held by a slow request for 40 s), and sent the token it
//! got before the wait, 25 s past its usable time and 20 s past its expiry. The first attempt
//! looked at its token again after the inner service's readiness; the retry did not.
//!
//! After that wait the retry takes the cache's token, if there is a fresh one; if there is none
//! (the next fetch is still running, or failed, or brought the refused token again), it gives up
//! and returns the refusal, counted as `not_retried_no_new_token`.

use std::{
    convert::Infallible,
    future::Future,
    io,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use besender_auth::{AuthStats, BesenderAuthLayer, ReplayBody, Token, TokenCache};
use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Empty;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt, limit::ConcurrencyLimit};

type Body = Empty<Bytes>;

const LIFETIME: Duration = Duration::from_secs(20);
const MARGIN: Duration = Duration::from_secs(5);

/// Refuses `t1`; answers requests marked `x-slow` after 40 s. Records each token it gets, and
/// when.
#[derive(Clone, Default)]
struct Api {
    seen: Arc<Mutex<Vec<(String, Instant)>>>,
}

impl Service<Request<ReplayBody<Body>>> for Api {
    type Response = Response<()>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<()>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<ReplayBody<Body>>) -> Self::Future {
        let token = request.headers()[header::AUTHORIZATION].to_str().unwrap();
        let token = token.strip_prefix("Bearer ").unwrap().to_owned();
        let slow = request.headers().contains_key("x-slow");
        self.seen
            .lock()
            .unwrap()
            .push((token.clone(), Instant::now()));
        Box::pin(async move {
            if slow {
                tokio::time::sleep(Duration::from_secs(40)).await;
            }
            let mut response = Response::new(());
            if token == "t1" {
                *response.status_mut() = StatusCode::UNAUTHORIZED;
            }
            Ok(response)
        })
    }
}

fn get(slow: bool) -> Request<Body> {
    let request = Request::get("http://127.0.0.1/");
    let request = if slow {
        request.header("x-slow", "1")
    } else {
        request
    };
    request.body(Empty::new()).unwrap()
}

/// What the source does from its third fetch on (the first brings t1, the second t2).
#[derive(Clone, Copy, Debug)]
enum Later {
    /// New tokens t3, t4, ... at once.
    Fresh,
    /// A fetch that takes 1000 s.
    Slow,
    /// A failed fetch.
    Fails,
    /// The refused token, t1, again.
    Refused,
}

/// What one scenario saw.
struct Outcome {
    /// A's answer, after its retry (or not).
    refused_request: StatusCode,
    stats: AuthStats,
}

/// A holds the only permit of a `ConcurrencyLimit` under the layer for a request that will be
/// refused (t1); B queues for the permit with a slow request. A's refusal brings t2; B gets the
/// permit first and holds it for 40 s while A's retry waits for it. By then t2 (usable for 15 s)
/// has run out, and the source does what `later` says.
async fn scenario(later: Later) -> Outcome {
    // Every issue of a token, in order: a token may be issued twice (`Later::Refused`).
    let issued = Arc::new(Mutex::new(Vec::<(String, Instant)>::new()));
    let source = {
        let issued = Arc::clone(&issued);
        move || {
            let fetch = issued.lock().unwrap().len() + 1;
            let token = match (fetch, later) {
                (1, _) => "t1".to_owned(),
                (2, _) | (_, Later::Fresh | Later::Slow) => format!("t{fetch}"),
                (_, Later::Refused) => "t1".to_owned(),
                (_, Later::Fails) => {
                    let err = io::Error::other("the token endpoint is down");
                    return Box::pin(std::future::ready(Err(err)))
                        as Pin<Box<dyn Future<Output = Result<Token, io::Error>> + Send>>;
                }
            };
            let issued = Arc::clone(&issued);
            Box::pin(async move {
                if fetch > 2 && matches!(later, Later::Slow) {
                    tokio::time::sleep(Duration::from_secs(1000)).await;
                }
                issued.lock().unwrap().push((token.clone(), Instant::now()));
                Ok(Token::bearer(token, LIFETIME))
            })
        }
    };
    let cache = TokenCache::builder(source).expiry_margin(MARGIN).build();
    // The retry waits 40 s for the permit: longer than the default bound on that wait (30 s),
    // which `tests/layer_capacity.rs` checks; here it must outlast the token.
    let layer = BesenderAuthLayer::from_cache(cache).retry_ready_wait(Duration::from_secs(120));
    let api = Api::default();
    let service = layer.layer(ConcurrencyLimit::new(api.clone(), 1));

    let mut a = service.clone();
    a.ready().await.unwrap();
    let refused = a.call(get(false));
    let mut b = service.clone();
    let slow = tokio::spawn(async move {
        b.ready().await.unwrap();
        b.call(get(true)).await
    });
    tokio::task::yield_now().await;
    let refused_request = refused.await.unwrap().status();
    assert_eq!(slow.await.unwrap().unwrap().status(), StatusCode::OK);

    // Each token sent was within the usable time of its latest issue before it was sent.
    let issued = issued.lock().unwrap();
    for (token, at) in api.seen.lock().unwrap().iter() {
        let issue = issued
            .iter()
            .rev()
            .find(|(t, issued_at)| t == token && issued_at <= at)
            .unwrap_or_else(|| panic!("{token} was sent before it was issued"));
        let usable_until = issue.1 + LIFETIME - MARGIN;
        assert!(
            *at < usable_until,
            "{later:?}: {token} was sent {:?} past its usable time",
            *at - usable_until
        );
    }
    Outcome {
        refused_request,
        stats: layer.stats(),
    }
}

#[tokio::test(start_paused = true)]
async fn a_retry_that_waited_for_inner_capacity_sends_no_dead_token() {
    let outcome = scenario(Later::Fresh).await;
    assert_eq!(outcome.refused_request, StatusCode::OK, "retried with t3");
    assert_eq!(outcome.stats.retries, 1);
}

/// The retry's token ran out while it waited, and no fresh one is at hand: each way, the
/// refusal comes back, nothing dead is sent (checked in `scenario`), and it is counted.
#[tokio::test(start_paused = true)]
async fn a_retry_whose_token_ran_out_gives_up_when_no_fresh_one_is_at_hand() {
    for later in [Later::Slow, Later::Fails, Later::Refused] {
        let outcome = scenario(later).await;
        assert_eq!(
            outcome.refused_request,
            StatusCode::UNAUTHORIZED,
            "{later:?}: the refusal itself"
        );
        assert_eq!(outcome.stats.retries, 0, "{later:?}");
        assert_eq!(outcome.stats.not_retried_no_new_token, 1, "{later:?}");
    }
}
