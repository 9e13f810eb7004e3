//! Property test: random interleavings of callers, dropped callers, fetch delays, failures,
//! refusals and the passage of time never hang a caller, never run two fetches at once, and
//! never let a failure discard a valid token.

mod common;

use std::time::Duration;

use besender_auth::{Token, TokenCache};
use common::source::TestSource;
use proptest::prelude::*;
use tokio::{task::JoinHandle, time::timeout};

#[derive(Debug, Clone)]
enum Op {
    /// A caller starts `get()` on a task of its own.
    Call,
    /// The n-th pending caller is dropped (aborted), wherever it is.
    Drop(usize),
    /// Simulated time passes.
    Advance(u64),
    /// The endpoint goes down or comes back.
    Down(bool),
    /// Fetches take this long from now on.
    Delay(u64),
    /// A server refuses the last token a caller got.
    Refuse,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::Call),
        2 => any::<usize>().prop_map(Op::Drop),
        3 => (0u64..30_000).prop_map(Op::Advance),
        1 => any::<bool>().prop_map(Op::Down),
        1 => (0u64..5_000).prop_map(Op::Delay),
        1 => Just(Op::Refuse),
    ]
}

async fn yield_many() {
    for _ in 0..8 {
        tokio::task::yield_now().await;
    }
}

async fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let source = TestSource::new(Duration::from_secs(100), Duration::ZERO);
    let cache = TokenCache::new(source.source());
    let mut pending: Vec<JoinHandle<Option<Token>>> = Vec::new();
    // The newest token a caller received that no server has refused since.
    let mut unrefused: Option<Token> = None;
    let mut last: Option<Token> = None;

    for op in ops {
        match op {
            Op::Call => {
                let cache = cache.clone();
                pending.push(tokio::spawn(async move { cache.get().await.ok() }));
            }
            Op::Drop(n) if !pending.is_empty() => {
                let n = n % pending.len();
                pending.swap_remove(n).abort();
            }
            Op::Drop(_) => {}
            Op::Advance(ms) => tokio::time::advance(Duration::from_millis(ms)).await,
            Op::Down(down) => source.set_down(down),
            Op::Delay(ms) => source.set_delay(Duration::from_millis(ms)),
            Op::Refuse => {
                if let Some(token) = &last {
                    cache.invalidate(token);
                }
                unrefused = None;
            }
        }
        yield_many().await;
        // Collect finished callers.
        let mut still_pending = Vec::new();
        for handle in pending.drain(..) {
            if handle.is_finished() {
                if let Ok(Some(token)) = handle.await {
                    unrefused = Some(token.clone());
                    last = Some(token);
                }
            } else {
                still_pending.push(handle);
            }
        }
        pending = still_pending;

        prop_assert!(source.max_in_flight() <= 1, "two fetches ran at once");
        // A token with time to spare and no refusal must be served at once, whatever failed.
        if let Some(token) = &unrefused {
            if token.remaining() > Duration::from_secs(11) {
                let now = timeout(Duration::ZERO, cache.get()).await;
                prop_assert!(
                    matches!(now, Ok(Ok(_))),
                    "a valid token was not served at once: {now:?}"
                );
            }
        }
    }

    // No hang: once the endpoint recovers, every remaining caller finishes.
    source.set_down(false);
    source.set_delay(Duration::ZERO);
    for handle in pending {
        let finished = timeout(Duration::from_secs(600), handle).await;
        prop_assert!(finished.is_ok(), "a caller hung");
    }
    let recovered = timeout(Duration::from_secs(600), async {
        loop {
            if cache.get().await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
    .await;
    prop_assert!(recovered.is_ok(), "the cache did not recover");
    prop_assert!(source.max_in_flight() <= 1);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn random_interleavings_never_hang_double_fetch_or_discard_a_valid_token(
        ops in proptest::collection::vec(op(), 1..60)
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(run(ops))?;
    }
}
