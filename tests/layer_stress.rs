//! Randomized, seeded stress test of the layer: each seed draws a whole scenario (a stack of
//! `Buffer`, `ConcurrencyLimit` and `Timeout` above and below the layer over an in-process
//! API; the layer's mode: retry on, retry off (`retry(false)`), or no retry at all
//! (`without_retry()`, a `BesenderAuth<_, NoRetry>` whose inner service gets the caller's body
//! as it is, no `ReplayBody`); a replay cap, a token source that delays, fails, stalls, repeats
//! a token or panics, revocations and a phase refusing every token, bodies of every framing,
//! many callers that give up at random) and checks, during it and at its end, what the crate
//! promises (`layer_stress/invariants.rs` lists each, with where it is documented): no hang,
//! no panic escaping, at most one retry and only of a refusal with another token, the caller's
//! body and head on both attempts, no token past its usable time, bounded forced refreshes,
//! every permit and slot free and no task left at the end. The same scenarios and checks run
//! in all three modes: without retries, those of retries hold trivially (never a second
//! attempt) and the rest as with retry on. A randomized harness like this found the deadlock
//! `tests/layer_capacity.rs` pins; hand-written tests only check the interleavings someone
//! thought of.
//!
//! On Tokio's paused clock, so time costs nothing and a seed replays the same scenario; a few
//! also run on a multi-thread runtime on the real clock. (Tokio wakes the waiters of one
//! `watch` channel, a shared token fetch, in an order it draws at random, so a run's
//! interleavings can still differ slightly from one replay to the next.)
//!
//! `STRESS_SEEDS=a,b,c` runs just those seeds, `STRESS_N=<count>` seeds 1 to count (and a
//! few more on the multi-thread runtime; a failure names its seed and the command), and
//! `STRESS_VERBOSE=1` prints what each seed did. It found two bugs, now fixed and pinned by
//! `tests/layer_stale_token_wait.rs` and `tests/layer_retry_dead_token.rs`.

mod common;

#[path = "layer_stress/body.rs"]
mod body;
#[path = "layer_stress/callers.rs"]
mod callers;
#[path = "layer_stress/invariants.rs"]
mod invariants;
#[path = "layer_stress/ledger.rs"]
mod ledger;
#[path = "layer_stress/mock_api.rs"]
mod mock_api;
#[path = "layer_stress/rng.rs"]
mod rng;
#[path = "layer_stress/run.rs"]
mod run;
#[path = "layer_stress/runner.rs"]
mod runner;
#[path = "layer_stress/scenario.rs"]
mod scenario;
#[path = "layer_stress/stack.rs"]
mod stack;
#[path = "layer_stress/tap.rs"]
mod tap;
#[path = "layer_stress/tokens.rs"]
mod tokens;

use scenario::Mode;

/// Seeds 1 to this many run by default on the paused clock (about 11 s on two cores).
const PAUSED_SEEDS: u64 = 600;
/// And this many on a multi-thread runtime (each takes a second or two of real time).
const MULTI_THREAD_SEEDS: u64 = 3;

#[test]
fn seeded_scenarios_on_the_paused_clock_keep_every_invariant() {
    let seeds = runner::seeds(PAUSED_SEEDS, |n| n);
    runner::run(Mode::Paused, seeds, "on_the_paused_clock");
}

#[test]
fn seeded_scenarios_on_a_multi_thread_runtime_keep_every_invariant() {
    // `STRESS_N` asks for many seeds: a few more of these too.
    let seeds = runner::seeds(MULTI_THREAD_SEEDS, |n| (n / 200).max(MULTI_THREAD_SEEDS));
    runner::run(Mode::MultiThread, seeds, "on_a_multi_thread_runtime");
}
