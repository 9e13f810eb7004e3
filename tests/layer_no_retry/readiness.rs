//! Readiness: the token before inner capacity.

use super::*;

/// Tokens `gated-1`, `gated-2`, ... issued only when `gate` is notified, and how many fetches
/// started.
fn gated_source(gate: Arc<Notify>) -> (Arc<AtomicU64>, BesenderAuthLayer<NoRetry>) {
    let started = Arc::new(AtomicU64::new(0));
    let count = Arc::clone(&started);
    let layer = BesenderAuthLayer::new(move || {
        let n = count.fetch_add(1, Ordering::SeqCst) + 1;
        let gate = Arc::clone(&gate);
        async move {
            gate.notified().await;
            Ok::<_, BoxError>(Token::bearer(format!("gated-{n}"), DAY))
        }
    })
    .without_retry();
    (started, layer)
}

/// Counts `poll_ready` calls on the service it wraps.
#[derive(Clone)]
struct CountPolls<S> {
    inner: S,
    polls: Arc<AtomicU64>,
}

impl<S: Service<R>, R> Service<R> for CountPolls<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.polls.fetch_add(1, Ordering::SeqCst);
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> S::Future {
        self.inner.call(request)
    }
}

/// A `ConcurrencyLimit` of one over the client: while the token is fetched, the limit is not
/// polled, and another user of it gets the permit and reaches the server.
#[tokio::test]
async fn a_concurrency_limit_is_not_polled_until_the_token_is_there() {
    let server = AuthServer::start().await;
    let gate = Arc::new(Notify::new());
    let (started, layer) = gated_source(Arc::clone(&gate));
    let limited = ConcurrencyLimit::new(client(false), 1);
    let polls = Arc::new(AtomicU64::new(0));
    let service = layer.layer(CountPolls {
        inner: limited.clone(),
        polls: Arc::clone(&polls),
    });
    let url = server.url();
    let caller = tokio::spawn(async move { service.oneshot(json(&url, r#"{"who":"a"}"#)).await });
    settle().await;
    assert_eq!(
        started.load(Ordering::SeqCst),
        1,
        "the token fetch is running"
    );
    assert_eq!(
        polls.load(Ordering::SeqCst),
        0,
        "the limit was polled before the token came"
    );
    assert!(!caller.is_finished());

    // The only permit is free: another user of the limit sends now (no token: refused).
    let other = timeout(HANG, limited.clone().oneshot(json(&server.url(), "{}")))
        .await
        .expect("the waiting caller holds the permit")
        .unwrap();
    assert_eq!(other.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(server.seen().len(), 1);
    assert!(!caller.is_finished());

    gate.notify_one();
    let response = timeout(HANG, caller).await.unwrap().unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body_of(response).await, r#"{"who":"a"}"#);
    assert!(polls.load(Ordering::SeqCst) >= 1);
    let seen = server.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].authorization, None);
    assert_eq!(seen[1].authorization.as_deref(), Some("Bearer gated-1"));
}

/// One `Buffer` slot shared by a client waiting for its token and one with a token at hand:
/// the waiting one holds no slot, and the other's requests reach the server meanwhile.
#[tokio::test]
async fn a_caller_waiting_for_a_token_holds_no_buffer_slot() {
    let server = AuthServer::start().await;
    let gate = Arc::new(Notify::new());
    let (started, slow_layer) = gated_source(Arc::clone(&gate));
    let polls = Arc::new(AtomicU64::new(0));
    let buffer = Buffer::new(
        CountPolls {
            inner: client(false),
            polls: Arc::clone(&polls),
        },
        1,
    );
    let slow_client = slow_layer.layer(buffer.clone());
    let fast_client = BesenderAuthLayer::new(Token::bearer("fast", DAY))
        .without_retry()
        .layer(buffer);

    let url = server.url();
    let waiting = tokio::spawn(async move { slow_client.oneshot(json(&url, "{}")).await });
    settle().await;
    assert_eq!(started.load(Ordering::SeqCst), 1);
    for _ in 0..3 {
        let response = timeout(HANG, fast_client.clone().oneshot(json(&server.url(), "{}")))
            .await
            .expect("the waiting caller holds the only slot")
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    assert!(!waiting.is_finished());
    let tokens: Vec<_> = server.seen().into_iter().map(|s| s.authorization).collect();
    assert_eq!(tokens, vec![Some("Bearer fast".to_owned()); 3]);

    gate.notify_one();
    let response = timeout(HANG, waiting).await.unwrap().unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        server.seen()[3].authorization.as_deref(),
        Some("Bearer gated-1")
    );
}
