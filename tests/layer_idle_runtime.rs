//! A runtime that is not driven runs no timer, so the cache's alarms cannot flag an expiry on
//! it (a `current_thread` runtime idle between `block_on` calls, the shape of a synchronous
//! wrapper). The layer must still never stamp a token past its usable time: a refusal could
//! repair it only for requests whose body can be replayed.

use std::{
    convert::Infallible,
    future::ready,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use besender_auth::{BesenderAuthLayer, ReplayBody, Token};
use bytes::Bytes;
use http::{Request, Response, header::AUTHORIZATION};
use http_body_util::Empty;
use tokio::runtime::Runtime;
use tower::{Layer, ServiceExt, service_fn};

const LIFETIME: Duration = Duration::from_secs(60);

fn paused_current_thread() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap()
}

#[test]
fn a_token_is_not_stamped_after_it_ran_out_while_its_alarm_could_not_run() {
    let fetches = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&fetches);
    let layer = BesenderAuthLayer::new(move || {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        async move { Ok::<_, Infallible>(Token::bearer(format!("token-{n}"), LIFETIME)) }
    });
    let stamped = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&stamped);
    let inner = service_fn(move |request: Request<ReplayBody<Empty<Bytes>>>| {
        let header = request.headers().get(AUTHORIZATION).cloned();
        seen.lock()
            .unwrap()
            .push(header.map(|h| h.to_str().unwrap().to_owned()));
        ready(Ok::<_, Infallible>(Response::new(())))
    });
    let service = layer.layer(inner);
    let send = |runtime: &Runtime| {
        let request = Request::get("http://api.example/")
            .body(Empty::new())
            .unwrap();
        runtime.block_on(service.clone().oneshot(request)).unwrap();
    };

    // The first token is fetched on `first`, which also holds the alarm that would flag its
    // expiry; `first` is never driven again.
    let first = paused_current_thread();
    send(&first);
    // On another runtime's clock, the token's lifetime passes; no timer of `first` runs.
    let second = paused_current_thread();
    second.block_on(tokio::time::advance(LIFETIME + Duration::from_secs(1)));
    send(&second);

    assert_eq!(
        fetches.load(Ordering::SeqCst),
        2,
        "the run-out token was not replaced"
    );
    assert_eq!(
        *stamped.lock().unwrap(),
        [
            Some("Bearer token-1".to_owned()),
            Some("Bearer token-2".to_owned())
        ],
    );
}

#[test]
fn the_cached_header_is_not_served_after_it_ran_out_while_its_alarm_could_not_run() {
    let layer =
        BesenderAuthLayer::new(|| async { Ok::<_, Infallible>(Token::bearer("token", LIFETIME)) });
    let first = paused_current_thread();
    first.block_on(layer.cache().get()).unwrap();
    assert!(
        first
            .block_on(async { layer.cache().cached_header() })
            .is_some()
    );
    let second = paused_current_thread();
    second.block_on(async {
        tokio::time::advance(LIFETIME).await;
        assert!(layer.cache().cached_header().is_none());
    });
}
