//! `BesenderTokenSource`'s exchange with the endpoint itself: a connection refused, an endpoint
//! that never answers, stalls half-way through its answer or cuts it short, redirects, and a
//! second runtime. (`besender_source_errors.rs` covers what an answer may say.)

mod common;

use std::{error::Error as _, time::Duration};

use besender_auth::{BesenderErrorKind, BesenderTokenSource, TokenSource};
use common::{
    Reply, ScriptedServer,
    besender::{SECRET, error_from, good_token_fields, ok_body, source},
    refused_addr,
};
use http::StatusCode;

#[tokio::test]
async fn a_refused_connection_is_a_transport_error() {
    let addr = refused_addr().await;
    let err = source(&format!("http://{addr}")).fetch().await.unwrap_err();
    assert_eq!(err.kind(), &BesenderErrorKind::Transport);
    assert!(err.source().is_some());
    assert!(err.to_string().contains(&addr.to_string()));
    assert!(err.is_transient());
}

/// A source for `server` whose token call times out after 3 s.
fn with_a_3s_timeout(server: &ScriptedServer) -> BesenderTokenSource {
    BesenderTokenSource::builder(server.url())
        .client_id(19)
        .client_secret(SECRET)
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn an_endpoint_that_never_answers_times_out() {
    let server = ScriptedServer::start(Reply::Hang).await;
    let source = with_a_3s_timeout(&server);
    let err = source.fetch().await.unwrap_err();
    assert_eq!(
        err.kind(),
        &BesenderErrorKind::Timeout {
            after: Duration::from_secs(3)
        }
    );
    assert!(err.to_string().contains("3s"));
}

/// The timeout bounds the whole exchange, the body included: an endpoint that sends the head
/// and the start of the body, then nothing more, times out as one that never answers does.
#[tokio::test(start_paused = true)]
async fn an_endpoint_that_stops_half_way_through_its_answer_times_out() {
    let server = ScriptedServer::start(Reply::json(200, r#"{"code":200,"data":"#).endless()).await;
    let source = with_a_3s_timeout(&server);
    let err = tokio::time::timeout(Duration::from_secs(60), source.fetch())
        .await
        .expect("the body read is not bounded by the timeout")
        .unwrap_err();
    assert_eq!(
        err.kind(),
        &BesenderErrorKind::Timeout {
            after: Duration::from_secs(3)
        }
    );
    assert!(err.is_transient());
}

/// A connection closed before the body it declared is complete (here 500 bytes declared, 20
/// sent) is an unreadable body, with its cause, and transient: the next attempt may get it all.
#[tokio::test]
async fn an_answer_cut_short_is_an_unreadable_body() {
    let cut = Reply::json(200, r#"{"code":200,"data":"#)
        .chunked()
        .header("content-length", "500");
    let err = error_from(cut).await;
    assert_eq!(err.kind(), &BesenderErrorKind::Body);
    assert!(err.source().is_some());
    assert!(err.to_string().contains(err.endpoint()), "{err}");
    assert!(err.is_transient());
}

/// RFC 9110 §15.4: a redirect asks the client to repeat the request elsewhere, and a client that
/// follows one sends the client secret there (or, on 301, 302 and 303, may drop the body and
/// turn it into a GET). None of the redirect statuses is followed.
#[tokio::test]
async fn redirects_are_not_followed() {
    let target = ScriptedServer::start(Reply::json(200, ok_body(&good_token_fields()))).await;
    for status in [301, 302, 303, 307, 308] {
        let redirect = Reply::json(status, "{}").header(
            "location",
            format!("{}/open/api/v1/access_token", target.url()),
        );
        let err = error_from(redirect).await;
        assert_eq!(
            err.kind(),
            &BesenderErrorKind::Redirect {
                status: StatusCode::from_u16(status).unwrap()
            }
        );
        assert!(!err.is_transient(), "{status}");
    }
    assert!(
        target.requests().is_empty(),
        "the secret went to the redirect target"
    );
}

/// A keep-alive connection is driven by a task on the runtime that opened it: reused from
/// another runtime while that one sits idle (a synchronous wrapper's `current_thread` runtime
/// between `block_on` calls), it would never answer, and the call would stall until its
/// timeout. The built-in client keeps no idle connection.
#[test]
fn a_token_call_from_a_second_runtime_is_not_stalled_by_the_first_runtimes_connection() {
    let current_thread = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    };
    // The server on a runtime of its own thread, always driven.
    let (url_tx, url_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        current_thread().block_on(async move {
            let server =
                ScriptedServer::start(Reply::json(200, ok_body(&good_token_fields()))).await;
            url_tx.send(server.url()).unwrap();
            std::future::pending::<()>().await;
        });
    });
    let source = BesenderTokenSource::builder(url_rx.recv().unwrap())
        .client_id(19)
        .client_secret(SECRET)
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let first = current_thread();
    first.block_on(source.fetch()).expect("the first call");
    // `first` stays alive, and idle.
    let started = std::time::Instant::now();
    let second = current_thread().block_on(source.fetch());
    let took = started.elapsed();
    assert!(
        second.is_ok() && took < Duration::from_secs(1),
        "from a second runtime: {:?} after {took:?}",
        second.map(|_| ()).map_err(|e| e.to_string())
    );
    drop(first);
}
