//! The callers: each starts at its time and sends its requests, on a fresh clone of the stack
//! each, or on one clone it keeps (idle between requests, as a long-lived client is), and may
//! give up on a request at a random poll or after a while.

use std::{
    error::Error as StdError,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use besender_auth::Error;
use http::{Request, header};
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tower::{
    BoxError, Service, ServiceExt,
    buffer::error::{Closed, ServiceError},
    timeout::error::Elapsed,
};

use crate::{
    body::StressBody,
    ledger::{CallerError, CallerOutcome, Ledger},
    mock_api::ResponseTag,
    scenario::{CallerPlan, Cancel, RequestPlan},
    stack::OuterService,
    tap::{CallerTag, ID_HEADER},
};

pub async fn caller(plan: CallerPlan, stack: OuterService, ledger: Arc<Ledger>, t0: Instant) {
    sleep_until(t0 + plan.start).await;
    let mut kept = stack.clone();
    for request in &plan.requests {
        sleep(request.gap).await;
        match plan.keeps_service {
            true => send(&mut kept, request, &ledger).await,
            false => send(&mut stack.clone(), request, &ledger).await,
        };
    }
}

/// Sends one request: ready, perhaps a pause, the call; and records what became of it.
pub async fn send(
    service: &mut OuterService,
    plan: &RequestPlan,
    ledger: &Ledger,
) -> CallerOutcome {
    ledger.started(plan.id, plan.body.expected(), plan.dawdle.is_some());
    let request = build(plan);
    let exchange = async {
        service.ready().await?;
        if let Some(pause) = plan.dawdle {
            sleep(pause).await;
        }
        service.call(request).await
    };
    let result = match plan.cancel {
        Cancel::Never => Some(exchange.await),
        Cancel::AfterPolls(polls) => CancelAfterPolls::new(exchange, polls).await,
        Cancel::After(after) => timeout(after, exchange).await.ok(),
    };
    let outcome = match result {
        None => CallerOutcome::Cancelled,
        Some(Ok(response)) => match response.extensions().get::<ResponseTag>() {
            Some(answer) if answer.id == plan.id => CallerOutcome::Response {
                attempt: answer.attempt,
                outcome: answer.outcome,
            },
            answer => {
                let what = format!("request {} got the response to {answer:?}", plan.id);
                ledger.violation(what);
                CallerOutcome::Error(CallerError::Other("a stray response".into()))
            }
        },
        Some(Err(err)) => CallerOutcome::Error(classify(err)),
    };
    ledger.finished(plan.id, outcome.clone());
    outcome
}

fn build(plan: &RequestPlan) -> Request<StressBody> {
    let (path, content_type) = match plan.grpc {
        true => ("/stress.Api/Call", "application/grpc"),
        false => ("/api/items", "application/json"),
    };
    let mut request = Request::builder()
        .method(plan.method.clone())
        .uri(format!("http://api.test{path}?id={}", plan.id))
        .version(plan.version)
        .header(ID_HEADER, plan.id)
        .header(header::CONTENT_TYPE, content_type)
        .extension(CallerTag(plan.id));
    if plan.grpc {
        request = request.header(header::TE, "trailers");
    }
    for (name, value) in &plan.headers {
        request = request.header(name, value);
    }
    if plan.own_authorization {
        request = request.header(header::AUTHORIZATION, "Bearer the-callers-own");
    }
    request.body(plan.body.body()).unwrap()
}

/// Which part of the stack an error came from.
fn classify(err: BoxError) -> CallerError {
    let buffer_failed =
        |err: &(dyn StdError + 'static)| err.is::<ServiceError>() || err.is::<Closed>();
    if err.is::<Elapsed>() {
        return CallerError::Elapsed;
    }
    match err.downcast_ref::<Error>() {
        Some(Error::Token(token)) => CallerError::Token(token.kind().clone(), token.to_string()),
        Some(Error::Inner(inner)) if buffer_failed(&**inner) => {
            CallerError::BufferFailed(err.to_string())
        }
        Some(Error::Inner(_)) => CallerError::Inner,
        Some(Error::NotReady) => CallerError::NotReady,
        Some(other) => CallerError::Other(other.to_string()),
        None if buffer_failed(&*err) => CallerError::BufferFailed(err.to_string()),
        None => CallerError::Other(err.to_string()),
    }
}

/// Polls a future at most so many times, then drops it: a caller that gives up at a random
/// point, whatever the future is waiting for then.
struct CancelAfterPolls<F> {
    future: Option<Pin<Box<F>>>,
    left: u32,
}

impl<F> CancelAfterPolls<F> {
    fn new(future: F, polls: u32) -> Self {
        CancelAfterPolls {
            future: Some(Box::pin(future)),
            left: polls,
        }
    }
}

impl<F: Future> Future for CancelAfterPolls<F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        match this.future.as_mut() {
            Some(future) if this.left > 0 => {
                this.left -= 1;
                future.as_mut().poll(cx).map(Some)
            }
            _ => {
                this.future = None;
                Poll::Ready(None)
            }
        }
    }
}
