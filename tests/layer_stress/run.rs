//! Plays one scenario on a runtime of its own: builds the stack, with the layer in the
//! scenario's retry mode (on, off, or `without_retry`), starts the revocations and the callers,
//! watches for a hang, and once every caller is done checks the end state: the API idle, every
//! permit and slot free, a refusal of the served token retried (or, without retries, the next
//! request carrying a fresh token), the counters, and no task left once everything is dropped.

use std::{sync::Arc, time::Duration};

use besender_auth::{BesenderAuthLayer, TokenCache};
use bytes::Bytes;
use http::{Method, Version};
use tokio::{
    runtime::Handle,
    task::JoinHandle,
    time::{Instant, sleep, sleep_until},
};

use crate::{
    body::{BodySpec, Framing},
    callers::{caller, send},
    common::paused_runtime,
    invariants::{self, Rules},
    ledger::{CallerOutcome, Ledger},
    mock_api::{MockApi, Outcome, PROBE_HEADER},
    scenario::{Cancel, Mode, RequestPlan, Retry, Revocation, Scenario},
    stack::{AuthLayer, Stack},
    tap::Tap,
    tokens::Tokens,
};

/// The ids of the end-of-scenario probe requests (the callers' count from 1).
const PROBE_ID: u64 = 1 << 40;

/// Plays `sc` and returns every invariant it broke, and a tally of what happened.
pub fn play(sc: &Scenario) -> (Vec<String>, String) {
    let runtime = match sc.mode {
        Mode::Paused => paused_runtime(),
        Mode::MultiThread => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap(),
    };
    runtime.block_on(course(sc))
}

/// Everything a scenario runs on.
struct World {
    ledger: Arc<Ledger>,
    rules: Arc<Rules>,
    tokens: Arc<Tokens>,
    api: MockApi,
    layer: AuthLayer,
    stack: Stack,
}

async fn course(sc: &Scenario) -> (Vec<String>, String) {
    let t0 = Instant::now();
    let world = World::build(sc, t0);
    let ledger = Arc::clone(&world.ledger);
    let revoker = tokio::spawn(revocations(
        sc.revocations.clone(),
        Arc::clone(&world.tokens),
        t0,
    ));
    let callers: Vec<_> = sc
        .callers
        .iter()
        .map(|plan| {
            let (stack, ledger) = (world.stack.outer.clone(), Arc::clone(&ledger));
            tokio::spawn(caller(plan.clone(), stack, ledger, t0))
        })
        .collect();
    sleep_until(t0 + sc.active).await;
    world.tokens.set_healthy();
    let hung = watch(&callers, &ledger, sc, t0).await;
    for caller in callers {
        match caller.await {
            Err(err) if err.is_panic() => ledger.violation(format!(
                "a panic escaped the layer into a caller: {}",
                panic_message(err.into_panic())
            )),
            _ => {}
        }
    }
    let _ = revoker.await;
    // After a hang the end state says nothing new.
    if !hung {
        world.end_checks(sc).await;
        let found = invariants::at_end(&ledger.book(), &world.rules, world.layer.stats());
        ledger.extend(found);
    }
    drop(world);
    if !hung {
        no_task_left(&ledger, sc.mode).await;
    }
    (ledger.take_violations(), ledger.tally())
}

async fn revocations(mut plan: Vec<(Duration, Revocation)>, tokens: Arc<Tokens>, t0: Instant) {
    plan.sort_by_key(|&(at, _)| at);
    for (at, which) in plan {
        sleep_until(t0 + at).await;
        tokens.revoke(which);
    }
}

/// Waits for every caller. A hang is a stretch with requests under way and none finishing,
/// or a caller still busy long after the scenario's active part: every request ends without a
/// deadlock, its slowest path being bounded (fetch timeouts, the replay wait, the retry's wait
/// for inner capacity, the API's delays, a pause between ready and call). Reports which requests were stuck, and gives up
/// on them.
async fn watch(callers: &[JoinHandle<()>], ledger: &Ledger, sc: &Scenario, t0: Instant) -> bool {
    let (quiet, tick) = (sc.mode.ms(300_000), sc.mode.ms(1_000));
    let give_up = t0 + sc.active + sc.mode.ms(1_800_000);
    let (mut finished, mut since) = (ledger.book().finished, Instant::now());
    while !callers.iter().all(JoinHandle::is_finished) {
        sleep(tick).await;
        let mut book = ledger.book();
        if book.finished != finished || book.in_progress == 0 {
            (finished, since) = (book.finished, Instant::now());
        }
        if since.elapsed() < quiet && Instant::now() < give_up {
            continue;
        }
        let mut stuck = Vec::new();
        for (id, log) in book
            .requests
            .iter_mut()
            .filter(|(_, l)| l.outcome.is_none())
        {
            let attempts: Vec<_> = log
                .attempts
                .iter()
                .map(|a| {
                    format!(
                        "{} at {:.3}s, answered {:?}",
                        a.token,
                        ledger.secs(a.at),
                        a.delivered
                    )
                })
                .collect();
            stuck.push(format!("request {id} ({attempts:?})"));
            log.outcome = Some(CallerOutcome::Hung);
        }
        drop(book);
        ledger.violation(format!(
            "a hang: no request finished for {:?} while {} were under way: {}",
            since.elapsed(),
            stuck.len(),
            stuck.join("; ")
        ));
        callers.iter().for_each(JoinHandle::abort);
        return true;
    }
    false
}

impl World {
    fn build(sc: &Scenario, t0: Instant) -> Self {
        let ledger = Arc::new(Ledger::new(t0));
        let tokens = Tokens::new(sc, t0, Arc::clone(&ledger));
        let rules = Arc::new(Rules::of(sc, t0));
        let api = MockApi::new(sc, Arc::clone(&tokens), Arc::clone(&ledger));
        // No refresh jitter, and a backoff that cannot grow past the error hold: the cache
        // draws neither from the seed, and a seed must replay the same schedule.
        let cache = TokenCache::builder(tokens.source())
            .refresh_window(0.1, sc.mode.ms(60_000))
            .refresh_jitter(0.0)
            .expiry_margin(sc.cache.expiry_margin)
            .backoff(sc.cache.backoff, sc.cache.backoff)
            .error_hold(sc.cache.backoff)
            .min_forced_refresh_interval(sc.cache.min_forced_interval)
            .fetch_timeout(sc.cache.fetch_timeout)
            .build();
        let layer = BesenderAuthLayer::from_cache(cache)
            .max_replay_bytes(sc.max_replay_bytes)
            .replay_wait(sc.replay_wait);
        let layer = match sc.retry {
            Retry::On => AuthLayer::Retry(layer.retry(true)),
            Retry::Off => AuthLayer::Retry(layer.retry(false)),
            Retry::None => AuthLayer::NoRetry(layer.without_retry()),
        };
        let tap = {
            let (ledger, tokens, rules) =
                (Arc::clone(&ledger), Arc::clone(&tokens), Arc::clone(&rules));
            move |inner| Tap::new(inner, ledger, tokens, rules)
        };
        let stack = Stack::build(&sc.inner, &sc.outer, &layer, api.clone(), tap);
        World {
            ledger,
            rules,
            tokens,
            api,
            layer,
            stack,
        }
    }

    /// With every caller done: the API goes idle, a fresh clone of the stack is ready at once,
    /// the served token's refusal is retried, and every level has all its capacity free.
    async fn end_checks(&self, sc: &Scenario) {
        let (bound, tick) = (sc.mode.ms(120_000), sc.mode.ms(100));
        if !wait_until(bound, tick, || self.api.busy() == 0).await {
            let busy = self.api.busy();
            self.ledger
                .violation(format!("{busy} API calls or drains never ended"));
        }
        self.stack.probe_top(&self.ledger, bound).await;
        sleep(sc.cache.min_forced_interval + sc.mode.ms(1_000)).await;
        self.retry_probe(sc).await;
        self.stack.probe_every_level(&self.ledger, bound).await;
    }

    /// The served token revoked once the forced-refresh interval is past: a request carrying
    /// it is refused, the cache refreshes, and the layer retries once with the fresh token;
    /// with retry off or without retry the refusal comes back and the next request carries the
    /// fresh token (README, "refusal" and "retry"; `BesenderAuthLayer::without_retry`).
    async fn retry_probe(&self, sc: &Scenario) {
        // A call of the source made before it turned healthy may still run, and fail or
        // stall: the refusal would join it. Once it is over, the next call works.
        let bound = sc.cache.fetch_timeout + sc.mode.ms(2_000);
        wait_until(bound, sc.mode.ms(100), || self.tokens.calling() == 0).await;
        sleep(sc.cache.backoff).await;
        if let Err(err) = self.layer.cache().get().await {
            let what = format!("no token at the end, with the source healthy: {err}");
            self.ledger.violation(what);
            return;
        }
        self.tokens.revoke(Revocation::All);
        let send_probe =
            |id| async move { send(&mut self.stack.outer.clone(), &probe(id), &self.ledger).await };
        let got = send_probe(PROBE_ID).await;
        let then = match sc.retry.retries() {
            true => None,
            false => Some(send_probe(PROBE_ID + 1).await),
        };
        let accepted = |o: &CallerOutcome, at: u32| matches!(o, CallerOutcome::Response { attempt, outcome: Outcome::Ok } if *attempt == at);
        let refused = |o: &CallerOutcome| matches!(o, CallerOutcome::Response { attempt: 1, outcome } if outcome.is_refusal());
        let fine = match &then {
            None => accepted(&got, 2),
            Some(next) => refused(&got) && accepted(next, 1),
        };
        if !fine {
            self.ledger.violation(format!(
                "the served token revoked, with the source healthy and no forced refresh for \
                 {:?}: a request got {got:?}{}; expected {}",
                sc.cache.min_forced_interval,
                then.map(|o| format!(" and the next {o:?}"))
                    .unwrap_or_default(),
                match sc.retry.retries() {
                    true => "its retry's 200 (attempt 2)",
                    false => "the refusal, then a 200 with a fresh token",
                }
            ));
        }
    }
}

fn probe(id: u64) -> RequestPlan {
    let chunk = Bytes::from_static(b"{\"probe\": true}");
    RequestPlan {
        id,
        gap: Duration::ZERO,
        grpc: false,
        method: Method::POST,
        version: Version::HTTP_11,
        headers: vec![(PROBE_HEADER.into(), "1".into())],
        own_authorization: false,
        body: BodySpec {
            chunks: vec![chunk],
            trailers: None,
            framing: Framing::Exact,
            eager_end: true,
            stall: None,
            fail_at: None,
        },
        cancel: Cancel::Never,
        dawdle: None,
    }
}

/// With the stack, the layer and the cache dropped, every task ends: `Buffer` workers, fetches,
/// alarms, the API's drains. One still alive is blocked on something nothing will ever do.
async fn no_task_left(ledger: &Ledger, mode: Mode) {
    let metrics = Handle::current().metrics();
    let gone = || metrics.num_alive_tasks() == 0;
    if !wait_until(mode.ms(600_000), mode.ms(1_000), gone).await {
        ledger.violation(format!(
            "{} tasks still alive, long after the stack and the cache were dropped",
            metrics.num_alive_tasks()
        ));
    }
}

/// Waits until `done` holds, looking every `tick`, for at most `bound`; returns whether it
/// holds.
pub async fn wait_until(bound: Duration, tick: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + bound;
    while !done() {
        if Instant::now() >= deadline {
            return false;
        }
        sleep(tick).await;
    }
    true
}

pub fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    panic_text(&*payload)
        .unwrap_or("a panic without a message")
        .to_owned()
}

/// The text a panic was raised with (`panic!` makes a `String` or a `&'static str`), if any.
pub fn panic_text(payload: &(dyn std::any::Any + Send)) -> Option<&str> {
    payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
}
