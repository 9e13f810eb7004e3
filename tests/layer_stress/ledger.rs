//! What a scenario saw: each request the callers sent, every attempt the layer made of it and
//! what came back, what the caller got in the end, the token source's calls, and every broken
//! invariant (`invariants.rs` says which), stamped with the scenario's clock.

use std::{
    collections::BTreeMap,
    sync::{Mutex, MutexGuard},
};

use http::{Method, Uri, Version};
use tokio::time::Instant;

use crate::{
    body::{Digest, Expected},
    invariants::{self, Rules},
    mock_api::Outcome,
    tap::AttemptTag,
};

pub struct Ledger {
    t0: Instant,
    book: Mutex<Book>,
}

#[derive(Default)]
pub struct Book {
    pub violations: Vec<String>,
    pub requests: BTreeMap<u64, RequestLog>,
    /// When each call of the token source started.
    pub source_calls: Vec<Instant>,
    /// When each failed fetch ended, and how it failed.
    pub failed_fetches: Vec<(Instant, FailedFetch)>,
    /// Requests started and not finished yet, and how many finished (the hang watch's view of
    /// progress).
    pub in_progress: usize,
    pub finished: u64,
}

pub struct RequestLog {
    pub expected: Expected,
    /// The caller pauses between ready and call.
    pub dawdles: bool,
    pub attempts: Vec<Attempt>,
    pub outcome: Option<CallerOutcome>,
    pub finished_at: Option<Instant>,
}

/// How a fetch failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailedFetch {
    Down,
    Panicked,
    /// The cache gave up on it at its fetch timeout.
    TimedOut,
}

/// An attempt as the layer sent it to its inner service.
pub struct Attempt {
    pub token: String,
    pub at: Instant,
    pub head: Head,
    /// What the layer's response future got back from the inner service.
    pub delivered: Option<Delivered>,
    /// Body bytes the API read.
    pub read: u64,
    pub body_failed: bool,
}

/// The parts of a request head a retry must repeat (`Authorization` left out).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: Vec<(String, Vec<u8>)>,
}

/// An attempt on its way in, as the tap under the layer saw it.
pub struct Sent {
    pub id: u64,
    pub token: String,
    /// Until when the source said the token may be used (`None`: it never issued it).
    pub usable_until: Option<Instant>,
    pub head: Head,
    pub exact: Option<u64>,
    /// The request still carries the caller's extension (a retry must keep extensions).
    pub tagged: bool,
}

#[derive(Clone, Copy, Debug)]
pub enum Delivered {
    Response(Outcome),
    Error,
}

#[derive(Clone, Debug)]
pub enum CallerOutcome {
    /// The response of this attempt.
    Response {
        attempt: u32,
        outcome: Outcome,
    },
    Error(CallerError),
    Cancelled,
    /// Still waiting when the hang watch gave up on the scenario.
    Hung,
}

/// A caller's error, by the part of the stack it came from.
#[derive(Clone, Debug)]
pub enum CallerError {
    Token(besender_auth::TokenErrorKind, String),
    /// The layer's inner service failed (the API, a `Timeout` under the layer).
    Inner,
    NotReady,
    /// A `Timeout` above the layer.
    Elapsed,
    /// A `Buffer`'s worker died: the service under it failed in `poll_ready`.
    BufferFailed(String),
    Other(String),
}

impl Ledger {
    pub fn new(t0: Instant) -> Self {
        Ledger {
            t0,
            book: Mutex::default(),
        }
    }

    pub fn book(&self) -> MutexGuard<'_, Book> {
        // Nothing panics under this lock but a bug of this test, which fails it anyway.
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Seconds of scenario time, for messages.
    pub fn secs(&self, at: Instant) -> f64 {
        at.duration_since(self.t0).as_secs_f64()
    }

    pub fn violation(&self, what: impl Into<String>) {
        let line = format!("[{:.3}s] {}", self.secs(Instant::now()), what.into());
        self.book().violations.push(line);
    }

    fn violations_at(&self, book: &mut Book, found: Vec<String>) {
        let now = self.secs(Instant::now());
        book.violations
            .extend(found.into_iter().map(|v| format!("[{now:.3}s] {v}")));
    }

    pub fn started(&self, id: u64, expected: Expected, dawdles: bool) {
        let mut book = self.book();
        book.in_progress += 1;
        let log = RequestLog {
            expected,
            dawdles,
            attempts: Vec::new(),
            outcome: None,
            finished_at: None,
        };
        book.requests.insert(id, log);
    }

    pub fn finished(&self, id: u64, outcome: CallerOutcome) {
        let mut book = self.book();
        book.in_progress -= 1;
        book.finished += 1;
        if let Some(log) = book.requests.get_mut(&id) {
            log.outcome = Some(outcome);
            log.finished_at = Some(Instant::now());
        }
    }

    /// Records an attempt the layer sends, checks it, and returns its tag for the API.
    pub fn sent(&self, sent: Sent, rules: &Rules) -> AttemptTag {
        let mut book = self.book();
        let Some(log) = book.requests.get_mut(&sent.id) else {
            let unknown = format!("an attempt of request {} that no caller sent", sent.id);
            self.violations_at(&mut book, vec![unknown]);
            return AttemptTag::new(sent.id, 0, sent.token);
        };
        let now = Instant::now();
        let found = invariants::on_sent(log, &sent, now, rules);
        let tag = AttemptTag::new(sent.id, log.attempts.len() as u32 + 1, sent.token.clone());
        log.attempts.push(Attempt {
            token: sent.token,
            at: now,
            head: sent.head,
            delivered: None,
            read: 0,
            body_failed: false,
        });
        self.violations_at(&mut book, found);
        tag
    }

    fn with_attempt(
        &self,
        tag: &AttemptTag,
        f: impl FnOnce(&Expected, &mut Attempt) -> Vec<String>,
    ) {
        let mut book = self.book();
        let found = match book.requests.get_mut(&tag.id) {
            Some(RequestLog {
                expected, attempts, ..
            }) if (1..=attempts.len()).contains(&(tag.number as usize)) => {
                f(expected, &mut attempts[tag.number as usize - 1])
            }
            _ => vec![format!(
                "request {} attempt {} was never sent",
                tag.id, tag.number
            )],
        };
        self.violations_at(&mut book, found);
    }

    /// Whether the caller's body of request `id` was known to be empty when it was sent.
    pub fn known_empty(&self, id: u64) -> bool {
        self.book()
            .requests
            .get(&id)
            .is_some_and(|log| log.expected.empty)
    }

    pub fn delivered(&self, tag: &AttemptTag, delivered: Delivered) {
        self.with_attempt(tag, |_, attempt| {
            attempt.delivered = Some(delivered);
            Vec::new()
        });
    }

    pub fn body_read(&self, tag: &AttemptTag, bytes: usize) {
        self.with_attempt(tag, |_, attempt| {
            attempt.read += bytes as u64;
            Vec::new()
        });
    }

    pub fn body_ended(&self, tag: &AttemptTag, digest: Digest) {
        self.with_attempt(tag, |expected, _| {
            invariants::on_body_end(expected, tag, digest)
        });
    }

    pub fn body_failed(&self, tag: &AttemptTag) {
        self.with_attempt(tag, |expected, attempt| {
            attempt.body_failed = true;
            invariants::on_body_failed(expected, tag)
        });
    }

    pub fn source_called(&self) {
        self.book().source_calls.push(Instant::now());
    }

    /// A fetch failed, or will fail, at `at`.
    pub fn fetch_failed(&self, at: Instant, how: FailedFetch) {
        self.book().failed_fetches.push((at, how));
    }

    /// Records what the end-of-scenario checks found.
    pub fn extend(&self, found: Vec<String>) {
        let mut book = self.book();
        self.violations_at(&mut book, found);
    }

    /// What happened, in one line: for `STRESS_VERBOSE`, to see what the seeds exercise.
    pub fn tally(&self) -> String {
        let book = self.book();
        let logs = || book.requests.values();
        let count = |f: &dyn Fn(&RequestLog) -> bool| logs().filter(|l| f(l)).count();
        format!(
            "{} requests: {} retried, {} answered, {} errors, {} cancelled; {} refusals; \
             {} source calls ({} panics); ended at {:.1}s",
            book.requests.len(),
            count(&|l| l.attempts.len() > 1),
            count(&|l| matches!(l.outcome, Some(CallerOutcome::Response { .. }))),
            count(&|l| matches!(l.outcome, Some(CallerOutcome::Error(_)))),
            count(&|l| matches!(l.outcome, Some(CallerOutcome::Cancelled))),
            logs()
                .flat_map(|l| &l.attempts)
                .filter(|a| matches!(a.delivered, Some(Delivered::Response(o)) if o.is_refusal()))
                .count(),
            book.source_calls.len(),
            book.failed_fetches
                .iter()
                .filter(|(_, how)| *how == FailedFetch::Panicked)
                .count(),
            self.secs(Instant::now()),
        )
    }

    pub fn take_violations(&self) -> Vec<String> {
        std::mem::take(&mut self.book().violations)
    }
}
