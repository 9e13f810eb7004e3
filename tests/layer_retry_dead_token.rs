//! A retry never sends a token known to be dead (README, "never a dead token"), however long
//! its fresh clone of the inner service took to be ready. Found while writing the randomized
//! stress test (`layer_stress`): the retry got its fresh token, waited for the clone (here a
//! `ConcurrencyLimit` under the layer, held by a slow request for 40 s), and sent the token it
//! got before the wait, 25 s past its usable time and 20 s past its expiry. The first attempt
//! looked at its token again after the inner service's readiness; the retry did not.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use besender_auth::{BesenderAuthLayer, ReplayBody, Token, TokenCache};
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

#[tokio::test(start_paused = true)]
async fn a_retry_that_waited_for_inner_capacity_sends_no_dead_token() {
    // Tokens t1, t2, ... of 20 s, usable for 15 s; when each was issued.
    let issued = Arc::new(Mutex::new(BTreeMap::new()));
    let source = {
        let issued = Arc::clone(&issued);
        move || {
            let mut issued = issued.lock().unwrap();
            let token = format!("t{}", issued.len() + 1);
            issued.insert(token.clone(), Instant::now());
            std::future::ready(Ok::<_, Infallible>(Token::bearer(token, LIFETIME)))
        }
    };
    let cache = TokenCache::builder(source).expiry_margin(MARGIN).build();
    let layer = BesenderAuthLayer::from_cache(cache);
    let api = Api::default();
    let service = layer.layer(ConcurrencyLimit::new(api.clone(), 1));

    // A holds the only permit for a request that will be refused (t1); B queues for it with
    // a slow request. A's refusal brings t2; B gets the permit first and holds it for 40 s;
    // A's retry waits for it.
    let mut a = service.clone();
    a.ready().await.unwrap();
    let refused = a.call(get(false));
    let mut b = service.clone();
    let slow = tokio::spawn(async move {
        b.ready().await.unwrap();
        b.call(get(true)).await
    });
    tokio::task::yield_now().await;
    assert_eq!(refused.await.unwrap().status(), StatusCode::OK, "retried");
    slow.await.unwrap().unwrap();

    let issued = issued.lock().unwrap();
    for (token, at) in api.seen.lock().unwrap().iter() {
        let usable_until = issued[token] + LIFETIME - MARGIN;
        assert!(
            *at < usable_until,
            "{token} was sent {:?} past its usable time",
            *at - usable_until
        );
    }
}
