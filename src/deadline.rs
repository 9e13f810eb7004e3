//! `Deadline`: an instant waited for on the timer of whichever runtime polls the wait.
//!
//! A Tokio timer belongs to the runtime it was made on. A wait that outlives one poll may next
//! be polled on another runtime (a synchronous wrapper makes a runtime per call, and gives up a
//! call that takes too long): a timer kept from the earlier runtime never fires if that runtime
//! now sits idle, and panics when polled if it is gone. So the timer is made on the runtime
//! polling it, and made again when that runtime changes.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use tokio::{
    runtime::{self, Handle},
    time::{Instant, Sleep},
};

/// Polled outside any Tokio runtime: there is no timer to wait on.
pub(crate) struct NoRuntime;

pub(crate) struct Deadline {
    at: Instant,
    timer: Option<(runtime::Id, Pin<Box<Sleep>>)>,
}

impl Deadline {
    pub(crate) fn new(at: Instant) -> Self {
        Self { at, timer: None }
    }

    /// `Ready(Ok)` once `at` has passed; otherwise registers a wake-up for it on the timer of
    /// the runtime polling now. `Ready(Err)` outside any runtime.
    pub(crate) fn poll_elapsed(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), NoRuntime>> {
        let Ok(here) = Handle::try_current().map(|handle| handle.id()) else {
            return Poll::Ready(Err(NoRuntime));
        };
        if Instant::now() >= self.at {
            return Poll::Ready(Ok(()));
        }
        let at = self.at;
        let sleep = match &mut self.timer {
            Some((id, sleep)) if *id == here => sleep,
            _ => {
                &mut self
                    .timer
                    .insert((here, Box::pin(tokio::time::sleep_until(at))))
                    .1
            }
        };
        sleep.as_mut().poll(cx).map(Ok)
    }
}
