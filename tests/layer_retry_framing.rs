//! The retry is framed as the first attempt was: trailers kept (chunked on HTTP/1.1), the same
//! framing headers, and the size the caller's body declared, even by a body whose size hint
//! does not shrink as it is read. Every server is on 127.0.0.1.

mod common;

use std::{
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use besender_auth::{BesenderAuth, ReplayBody};
use bytes::Bytes;
use common::{
    Frames, hyper_client,
    recording::{layer, recording_server, without_authorization},
};
use http::{HeaderMap, HeaderValue, Request, StatusCode, header};
use http_body::{Body, Frame, SizeHint};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use tokio::time::timeout;
use tower::{Layer, ServiceExt};

const HANG: Duration = Duration::from_secs(20);

/// RFC 9110 §6.5 / RFC 9112 §7.1.2: trailers travel in chunked framing. The first attempt of a
/// streaming body is chunked (unknown size) and carries its trailers; so must the retry. (An
/// earlier version reported the replay's exact size, so hyper framed the retry with
/// Content-Length, which has no room for trailers, and dropped them.)
#[tokio::test]
async fn h1_retry_keeps_request_trailers() {
    let (addr, seen) = recording_server().await;
    let (_source, layer) = layer();
    let service: BesenderAuth<Client<HttpConnector, ReplayBody<Frames>>> =
        layer.layer(hyper_client(false));
    let mut trailers = HeaderMap::new();
    trailers.insert("x-checksum", HeaderValue::from_static("abc123"));
    let request = Request::post(format!("http://{addr}/upload"))
        .header(header::TRAILER, "x-checksum")
        .body(Frames::new(&["hello ", "world"], Some(trailers.clone())))
        .unwrap();
    let response = timeout(HANG, service.oneshot(request))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "one refusal, one retry");
    assert_eq!(seen[0].body, "hello world");
    assert_eq!(seen[1].body, "hello world");
    assert_eq!(
        seen[0].trailers.as_ref(),
        Some(&trailers),
        "the first attempt carried its trailers"
    );
    assert_eq!(
        seen[1].trailers.as_ref(),
        Some(&trailers),
        "the retry lost the request trailers (retry headers: {:?})",
        seen[1].headers
    );
}

// ---------------------------------------------------------------------------------------------
// The retry's framing headers are the first attempt's.

/// The retry carries the same header section as the first attempt (but for the token). For a
/// streaming body of unknown size the first attempt goes out chunked (HTTP/1.1) or with no
/// Content-Length (h2), and so does the retry: the replay declares an exact size only if the
/// caller's body did. So for a stream that turns out empty: its first attempt is chunked, as
/// its end was not known before it was read, and its retry (an earlier version), whose body was
/// known to be empty by then, went out with no framing at all.
#[tokio::test]
async fn retry_keeps_the_first_attempts_framing_headers() {
    let mut mismatches = Vec::new();
    type MakeBody = fn() -> Frames;
    let bodies: [(&str, MakeBody); 2] = [
        ("a stream", || Frames::new(&["hello ", "world"], None)),
        ("an empty stream", || {
            Frames::new(&[], None).end_unannounced()
        }),
    ];
    for ((what, body), h2) in bodies.into_iter().flat_map(|b| [(b, false), (b, true)]) {
        let (addr, seen) = recording_server().await;
        let (_source, layer) = layer();
        let service: BesenderAuth<Client<HttpConnector, ReplayBody<Frames>>> =
            layer.layer(hyper_client(h2));
        let request = Request::post(format!("http://{addr}/upload?x=1"))
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(body())
            .unwrap();
        let response = timeout(HANG, service.oneshot(request))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{what}, h2: {h2}");
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0].version, seen[1].version);
        assert_eq!(seen[0].body, seen[1].body);
        let (first, retry) = (
            without_authorization(&seen[0].headers),
            without_authorization(&seen[1].headers),
        );
        if first != retry {
            let show = |h: &[(String, Vec<u8>)]| {
                h.iter()
                    .map(|(n, v)| format!("{n}: {}", String::from_utf8_lossy(v)))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            mismatches.push(format!(
                "{what} over {}: first [{}] retry [{}]",
                if h2 { "h2" } else { "HTTP/1.1" },
                show(&first),
                show(&retry)
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "the retry's headers differ from the first attempt's:\n{}",
        mismatches.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// A refusal of a body declared over the cap is counted as a refused replay.

/// Declares its whole size, exactly, however much of it was read (http-body asks for the
/// remaining length), and reports its end only when polled past it.
struct Undiminished(Vec<Bytes>, u64);

impl Body for Undiminished {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let next = (!self.0.is_empty()).then(|| self.0.remove(0));
        Poll::Ready(next.map(|chunk| Ok(Frame::data(chunk))))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.1)
    }
}

/// HTTP/1.1 frames a body of exact size with `content-length` and stops polling it once that
/// many bytes are out, so the first attempt never saw this body's end. The retry declared the
/// kept bytes plus what the unended rest still declared (20 of 10) and hyper aborted it short
/// of that length: the caller got a send error instead of the retry's answer.
#[tokio::test]
async fn a_body_whose_size_hint_does_not_shrink_is_retried_with_its_declared_length() {
    for h2 in [false, true] {
        // A layer per protocol: each first attempt carries token-1 and is refused.
        let (addr, seen) = recording_server().await;
        let (_source, layer) = layer();
        let client: Client<HttpConnector, ReplayBody<Undiminished>> = hyper_client(h2);
        let service: BesenderAuth<_> = layer.layer(client);
        let body = Undiminished(
            vec![Bytes::from_static(b"0123"), Bytes::from_static(b"456789")],
            10,
        );
        let request = Request::put(format!("http://{addr}/upload"))
            .body(body)
            .unwrap();
        let response = timeout(HANG, service.oneshot(request))
            .await
            .expect("hung")
            .unwrap_or_else(|err| panic!("h2 {h2}: the retry is sent whole: {err:?}"));
        assert_eq!(response.status(), StatusCode::OK, "h2: {h2}");
        assert_eq!(layer.stats().retries, 1, "h2: {h2}");
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 2, "h2 {h2}: refused, then retried: {seen:?}");
        for request in seen.iter() {
            assert_eq!(&request.body[..], b"0123456789");
            assert_eq!(request.headers[header::CONTENT_LENGTH], "10");
        }
    }
}
