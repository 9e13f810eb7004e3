//! The invariants, each with where the crate promises it. `on_*` check an attempt as the layer
//! sends it and a body as the API reads it; `at_end`, once a scenario is over, what each
//! caller got, the layer's counters and the forced refreshes. `run.rs` checks the rest at the
//! end: no hang, every permit and slot free, a refusal of the served token retried, no task
//! left. A token's usable time and the forced-refresh bound are checked on the paused clock
//! only: on a real one the cache's alarm may be late by a task's poll, and the edges of a
//! phase by a thread's scheduling.
//!
//! "Never a known-dead token" is what the crate documents (README, "never a dead token";
//! ARCHITECTURE, the service's cached lease): no attempt carries a token at or past its usable
//! time, its expiry less the cache's margin. A token the cache has invalidated may still go
//! out, by design: a service made ready before the refusal sends the token it holds while its
//! time is not up (`BesenderAuth::call`), and a refusal within the minimum forced-refresh
//! interval keeps the refused token on purpose. What is promised about refused tokens is
//! checked where it applies: a retry never carries the token just refused, forced refreshes
//! stay within what the interval allows, and at the end the served token's refusal is retried
//! with a fresh one.
//!
//! The same checks run in every retry mode. With retry off and without retry
//! (`BesenderAuth<_, NoRetry>`) those of retries hold trivially: an attempt past the first
//! breaks one, and the counters must show no retry. The rest (usable time, forced refreshes,
//! bodies, what each caller got, the error hold) hold as they do with retry on, and at the end
//! a refusal of the served token comes back and the next request carries a fresh one.

use std::{ops::Range, time::Duration};

use besender_auth::{AuthStats, TokenErrorKind};
use tokio::time::Instant;

use crate::{
    body::{Digest, Expected},
    ledger::{Book, CallerError, CallerOutcome, Delivered, FailedFetch, RequestLog, Sent},
    scenario::{Mode, Retry, Scenario},
    tap::AttemptTag,
};

/// What the checks need to know of the scenario.
pub struct Rules {
    pub retry: Retry,
    pub cap: u64,
    /// Whether to check a token's usable time (on the paused clock).
    pub check_clock: bool,
    /// The API refused every token then (checked on the paused clock).
    pub refuse_all: Option<Range<Instant>>,
    pub min_forced_interval: Duration,
    /// How long the cache holds a fetch's error (its backoff, which equals its error hold).
    pub error_hold: Duration,
}

impl Rules {
    pub fn of(sc: &Scenario, t0: Instant) -> Self {
        let paused = sc.mode == Mode::Paused;
        Rules {
            retry: sc.retry,
            cap: sc.max_replay_bytes as u64,
            check_clock: paused,
            refuse_all: paused
                .then(|| sc.refuse_all.clone().map(|p| t0 + p.start..t0 + p.end))
                .flatten(),
            min_forced_interval: sc.cache.min_forced_interval,
            error_hold: sc.cache.backoff,
        }
    }
}

/// An attempt as the layer sends it: at most two per request; a retry only after a refusal,
/// with retry on (never with retry off or without retry), another token, the same head, and a
/// body that could be replayed; every attempt with a token still usable and the size the caller
/// declared.
pub fn on_sent(log: &RequestLog, sent: &Sent, now: Instant, rules: &Rules) -> Vec<String> {
    let number = log.attempts.len() + 1;
    let expected = &log.expected;
    let mut found = Vec::new();
    match sent.usable_until {
        None => found.push(format!(
            "carries a token the source never issued: {:?}",
            sent.token
        )),
        // The retry too, however long it waited for inner capacity
        // (`tests/layer_retry_dead_token.rs`).
        Some(until) if rules.check_clock && now >= until => found.push(format!(
            "carries {} {:.3}s past its usable time (its expiry less the cache's margin)",
            sent.token,
            (now - until).as_secs_f64()
        )),
        Some(_) => {}
    }
    if !sent.tagged {
        found.push("lost the caller's request extension".into());
    }
    // The retry's body declares an exact size only if the caller's did (ARCHITECTURE, Replay).
    if !expected.empty && sent.exact != expected.exact {
        found.push(format!(
            "its body declares an exact size of {:?}; the caller's declared {:?}",
            sent.exact, expected.exact
        ));
    }
    if number >= 2 {
        let first = &log.attempts[0];
        if number > 2 {
            found.push("more than two attempts: the layer retries at most once".into());
        }
        if !rules.retry.retries() {
            found.push(format!("a retry with {}", rules.retry));
        }
        match first.delivered {
            None => found.push("a retry before the first attempt's response came back".into()),
            Some(Delivered::Error) => found.push("a retry after the first attempt failed".into()),
            Some(Delivered::Response(outcome)) if !outcome.is_refusal() => {
                found.push(format!("a retry after {outcome:?}, which refuses no token"))
            }
            Some(Delivered::Response(_)) => {}
        }
        if sent.token == first.token {
            found.push(format!(
                "the retry carries the refused token {}",
                sent.token
            ));
        }
        if sent.head != first.head {
            found.push(format!(
                "the retry's head is not the first attempt's: {:?}, then {:?}",
                first.head, sent.head
            ));
        }
        // Past the cap the kept frames are freed and replay is refused (ReplayBody).
        if first.read > rules.cap {
            found.push(format!(
                "a retry after the first attempt read {} bytes, over the cap of {}",
                first.read, rules.cap
            ));
        }
        if expected.lower > rules.cap && !expected.empty {
            found.push(format!(
                "a retry of a body declared over the cap ({} > {} bytes)",
                expected.lower, rules.cap
            ));
        }
        if first.body_failed {
            found.push("a retry of a body that failed".into());
        }
    }
    let id = sent.id;
    found
        .into_iter()
        .map(|what| format!("request {id} attempt {number}: {what}"))
        .collect()
}

/// A body read to its end is the caller's, byte for byte, trailers included, on either attempt.
pub fn on_body_end(expected: &Expected, tag: &AttemptTag, digest: Digest) -> Vec<String> {
    let mut found = Vec::new();
    if digest != expected.digest {
        found.push(format!(
            "request {} attempt {}: the body read to its end is not the caller's: {:?}, where \
             the caller sent {:?}",
            tag.id, tag.number, digest, expected.digest
        ));
    }
    if expected.fails {
        found.push(format!(
            "request {} attempt {}: the body ended cleanly, but the caller's fails",
            tag.id, tag.number
        ));
    }
    found
}

/// An attempt's body fails only where the caller's does.
pub fn on_body_failed(expected: &Expected, tag: &AttemptTag) -> Vec<String> {
    match expected.fails {
        true => Vec::new(),
        false => vec![format!(
            "request {} attempt {}: the body failed, but the caller's does not",
            tag.id, tag.number
        )],
    }
}

/// Once every caller is done: what each got, the layer's counters against what was seen,
/// and the forced refreshes the refuse-all phase cost.
pub fn at_end(book: &Book, rules: &Rules, stats: AuthStats) -> Vec<String> {
    let mut found = Vec::new();
    for (id, log) in &book.requests {
        let stale = rules
            .check_clock
            .then(|| stale_error(book, log, rules))
            .flatten();
        for what in outcome_violation(book, log).into_iter().chain(stale) {
            found.push(format!("request {id}: {what}"));
        }
    }
    let attempts = || book.requests.values().flat_map(|log| log.attempts.iter());
    let refused =
        |d: &Option<Delivered>| matches!(d, Some(Delivered::Response(o)) if o.is_refusal());
    // Counted on the way: every classified response, every retry sent, every retry whose
    // answer refused nothing (an error is no answer).
    let retries = book.requests.values().filter(|log| log.attempts.len() >= 2);
    let seen = (
        attempts().filter(|a| refused(&a.delivered)).count() as u64,
        retries.clone().count() as u64,
        retries
            .filter(|log| matches!(log.attempts[1].delivered, Some(Delivered::Response(_))))
            .filter(|log| !refused(&log.attempts[1].delivered))
            .count() as u64,
    );
    if seen != (stats.refusals, stats.retries, stats.successful_retries) {
        found.push(format!(
            "the layer's counters are not what its inner service saw: {stats:?}, but it \
             answered {} refusals and took {} retries, {} of them answered without refusal",
            seen.0, seen.1, seen.2
        ));
    }
    if let Some(phase) = &rules.refuse_all {
        found.extend(forced_refresh_bound(book, phase, rules.min_forced_interval));
    }
    found
}

/// What the caller got must be the last attempt's answer, or an error of a kind the stack
/// documents; never a panic or a hang.
fn outcome_violation(book: &Book, log: &RequestLog) -> Option<String> {
    let sent = log.attempts.len() as u32;
    let tokens: Vec<_> = log.attempts.iter().map(|a| a.token.as_str()).collect();
    match log.outcome.as_ref() {
        None | Some(CallerOutcome::Hung) => {
            Some(format!("never finished ({sent} attempts sent: {tokens:?})"))
        }
        Some(CallerOutcome::Cancelled) => None,
        Some(CallerOutcome::Response { attempt, outcome }) => {
            let delivered = log
                .attempts
                .get(*attempt as usize - 1)
                .and_then(|a| a.delivered);
            if *attempt != sent {
                Some(format!(
                    "got attempt {attempt}'s response, but {sent} were sent"
                ))
            } else if !matches!(delivered, Some(Delivered::Response(o)) if o == *outcome) {
                Some(format!(
                    "got {outcome:?}, but its attempt was answered {delivered:?}"
                ))
            } else {
                None
            }
        }
        Some(CallerOutcome::Error(err)) => match err {
            CallerError::Inner | CallerError::Elapsed => None,
            CallerError::Token(TokenErrorKind::Cancelled | TokenErrorKind::NoRuntime, text) => {
                Some(format!("a token error no scenario causes: {text}"))
            }
            CallerError::Token(_, text) if text.contains("panicked") && !panicked(book) => Some(
                format!("a panicked fetch, but the source never panicked: {text}"),
            ),
            CallerError::Token(..) => None,
            CallerError::NotReady => Some("Error::NotReady through a stack that polls".into()),
            CallerError::BufferFailed(text) => Some(format!(
                "a Buffer's worker died, so the service under it failed in poll_ready \
                 (the layer's never does): {text}"
            )),
            CallerError::Other(text) => Some(format!("an error of no known kind: {text}")),
        },
    }
}

fn panicked(book: &Book) -> bool {
    book.failed_fetches
        .iter()
        .any(|(_, how)| *how == FailedFetch::Panicked)
}

/// A call fails for want of a token with the error of a fetch that just failed, or, while no
/// token is at hand, of the last one until the next fetch is due: the error hold (README,
/// "endpoint down"). A caller that calls at once after ready never gets an older error. (One
/// that pauses between them may: its call reports what its `poll_ready` found.)
///
/// This found a bug, now fixed: a service left waiting for a fetch (its caller gave up, or a
/// `Buffer`'s worker dropped a cancelled request) and polled again long after the fetch
/// failed reported that old failure, token or no token (`tests/layer_stale_token_wait.rs`);
/// about one seed in seventy showed it.
fn stale_error(book: &Book, log: &RequestLog, rules: &Rules) -> Option<String> {
    let (Some(CallerOutcome::Error(CallerError::Token(kind, text))), Some(at)) =
        (&log.outcome, log.finished_at)
    else {
        return None;
    };
    let how = match kind {
        _ if log.dawdles => return None,
        TokenErrorKind::Source if text.contains("panicked") => FailedFetch::Panicked,
        TokenErrorKind::Source => FailedFetch::Down,
        // Waiters give up a second after the fetch timeout if the fetch's task does not.
        TokenErrorKind::Timeout { .. } => FailedFetch::TimedOut,
        _ => return None,
    };
    let slack = Duration::from_secs(u64::from(how == FailedFetch::TimedOut));
    let failures = || book.failed_fetches.iter().filter(|(_, h)| *h == how);
    if failures().any(|&(failed, _)| failed <= at && at <= failed + rules.error_hold + slack) {
        return None;
    }
    let last = failures()
        .map(|&(failed, _)| failed)
        .filter(|&f| f <= at)
        .max();
    Some(format!(
        "failed with {text:?}, but the last fetch that failed so ended {:?} before, longer \
         than the error is held ({:?}): a stale wait (tests/layer_stale_token_wait.rs)",
        last.map(|f| at - f),
        rules.error_hold
    ))
}

/// TokenCacheBuilder::min_forced_refresh_interval: at most one forced refresh per interval,
/// and once per interval more for a token whose retry was accepted; the first refusal of a
/// normally fetched token always refreshes. While the API refuses every token and the source
/// works, that is at most two calls per interval, and a few for the normal fetches around it
/// (the token served when the phase began, its refresh ahead or expiry, one failure of a call
/// made before the phase and the fetch after it, each with the forced refresh of its token).
/// Tokens live at least 20 s, twice the longest phase, so none issued during it is refreshed
/// ahead (never before half-way through its lifetime) before the phase ends.
fn forced_refresh_bound(book: &Book, phase: &Range<Instant>, interval: Duration) -> Vec<String> {
    let calls = book
        .source_calls
        .iter()
        .filter(|at| phase.contains(at))
        .count();
    let length = phase.end - phase.start;
    let windows = (length.as_nanos() / interval.as_nanos()) as usize + 1;
    let bound = 2 * windows + 5;
    match calls > bound {
        true => vec![format!(
            "while the API refused every token ({length:?}), the source was called {calls} \
             times; a minimum forced-refresh interval of {interval:?} allows at most {bound}"
        )],
        false => Vec::new(),
    }
}
