use super::*;

fn round_trip(request: http::Request<()>) {
    let copy = KeptRequest::copy(&request).unwrap();
    let (parts, ()) = request.into_parts();
    let back = copy.to_parts().unwrap();
    let mut expected = parts.headers.clone();
    expected.remove(AUTHORIZATION);
    assert_eq!(back.method, parts.method);
    assert_eq!(back.uri, parts.uri);
    assert_eq!(back.version, parts.version);
    assert_eq!(back.headers, expected);
    let sensitivity = |h: &HeaderMap| h.values().map(|v| v.is_sensitive()).collect::<Vec<_>>();
    assert_eq!(sensitivity(&back.headers), sensitivity(&expected));
}

#[test]
fn heads_survive_the_round_trip() {
    let mut secret = HeaderValue::from_static("s3cr3t");
    secret.set_sensitive(true);
    round_trip(
        http::Request::post("https://user.example:8443/a/b?c=d&e")
            .version(Version::HTTP_2)
            .header("content-type", "application/json")
            .header("x-multi", "1")
            .header("x-multi", "2")
            .header("x-opaque", HeaderValue::from_bytes(b"caf\xe9").unwrap())
            .header("x-api-key", secret)
            .header("authorization", "Bearer dropped")
            .body(())
            .unwrap(),
    );
    round_trip(http::Request::get("/origin-form?q=1").body(()).unwrap());
    round_trip(
        http::Request::builder()
            .method("CONNECT")
            .uri("proxy.example:443")
            .body(())
            .unwrap(),
    );
    round_trip(
        http::Request::builder()
            .method("PURGE")
            .uri("*")
            .body(())
            .unwrap(),
    );
    round_trip(http::Request::get("/").body(()).unwrap());
    // The standard schemes are kept as they are, any other is copied.
    round_trip(http::Request::get("http://a.example/").body(()).unwrap());
    round_trip(http::Request::get("HTTPS://a.example/").body(()).unwrap());
    round_trip(
        http::Request::get("besender+unix://a.example/x")
            .body(())
            .unwrap(),
    );
}

#[test]
fn a_reused_copy_takes_the_scheme_of_its_own_request() {
    let kept = KeptRequest::copy(&http::Request::get("https://a.example/").body(()).unwrap());
    drop(kept);
    let other = http::Request::get("custom://b.example/y").body(()).unwrap();
    let back = KeptRequest::copy(&other).unwrap().to_parts().unwrap();
    assert_eq!(back.uri.scheme_str(), Some("custom"));
    assert_eq!(back.uri, *other.uri());
}

#[test]
fn a_dropped_head_lends_its_buffer_to_the_next_copy_on_its_thread() {
    let request = http::Request::get("/a")
        .header("x-a", "1")
        .body(())
        .unwrap();
    let first = KeptRequest::copy(&request).unwrap();
    let (copy, buffer) = (
        first.copied() as *const Copied,
        first.copied().bytes.as_ptr(),
    );
    drop(first);
    let second = KeptRequest::copy(&request).unwrap();
    assert_eq!(second.copied() as *const Copied, copy, "reused");
    assert_eq!(second.copied().bytes.as_ptr(), buffer, "reused");
    assert_eq!(second.to_parts().unwrap().headers["x-a"], "1");
    // Two heads alive at once: the second gets a copy of its own.
    let third = KeptRequest::copy(&request).unwrap();
    assert_ne!(
        third.copied().bytes.as_ptr(),
        second.copied().bytes.as_ptr()
    );
    // A large buffer is freed, not kept for the thread.
    let large = http::Request::get("/")
        .header("cookie", "c".repeat(2 * SPARE_MAX))
        .body(())
        .unwrap();
    drop((second, third));
    drop(KeptRequest::copy(&large).unwrap());
    let kept = SPARE.with(|spare| {
        let copy = spare.take();
        let capacity = copy.as_ref().map_or(0, |copy| copy.bytes.capacity());
        spare.set(copy);
        capacity
    });
    assert!(kept <= SPARE_MAX, "kept {kept} bytes");
}

#[test]
fn extensions_are_kept() {
    #[derive(Clone, PartialEq, Debug)]
    struct Tag(u32);
    let mut request = http::Request::get("/").body(()).unwrap();
    request.extensions_mut().insert(Tag(7));
    let back = KeptRequest::copy(&request).unwrap().to_parts().unwrap();
    assert_eq!(back.extensions.get::<Tag>(), Some(&Tag(7)));
    // The next copy on this thread reuses that one's storage, and none of its contents.
    let plain = http::Request::put("http://other.example/b")
        .version(Version::HTTP_2)
        .body(())
        .unwrap();
    let back = KeptRequest::copy(&plain).unwrap().to_parts().unwrap();
    assert_eq!(back.extensions.get::<Tag>(), None);
    assert_eq!(
        (back.method, back.uri, back.version, back.headers.len()),
        (Method::PUT, plain.uri().clone(), Version::HTTP_2, 0)
    );
}

#[test]
fn a_reused_copy_carries_nothing_of_the_request_before() {
    #[derive(Clone)]
    struct Tag;
    let mut full = http::Request::post("https://user.example:8443/a?b=c")
        .version(Version::HTTP_2)
        .header("x-one", "1")
        .header("x-two", "2")
        .body(())
        .unwrap();
    full.extensions_mut().insert(Tag);
    let mut kept = KeptRequest::copy(&full).unwrap();
    kept.keep(Some(Bytes::from_static(b"old body")));
    let reused = kept.copied() as *const Copied;
    drop(kept);
    let bare = http::Request::builder()
        .method("CONNECT")
        .uri("proxy.example:443")
        .version(Version::HTTP_10)
        .body(())
        .unwrap();
    let kept = KeptRequest::copy(&bare).unwrap();
    assert_eq!(kept.copied() as *const Copied, reused, "the box is reused");
    assert!(kept.data().is_none());
    let back = kept.to_parts().unwrap();
    assert_eq!(back.method, Method::CONNECT);
    assert_eq!(back.uri, "proxy.example:443");
    assert_eq!(back.uri.scheme(), None);
    assert_eq!(back.version, Version::HTTP_10);
    assert!(back.headers.is_empty());
    assert!(back.extensions.get::<Tag>().is_none());
}

#[test]
fn a_spare_copy_keeps_no_body_and_no_extensions() {
    #[derive(Clone)]
    struct Tag;
    let mut request = http::Request::get("/").body(()).unwrap();
    request.extensions_mut().insert(Tag);
    let mut kept = KeptRequest::copy(&request).unwrap();
    kept.keep(Some(Bytes::from_static(b"body")));
    assert_eq!(kept.data().map(|d| &d[..]), Some(&b"body"[..]));
    drop(kept);
    SPARE.with(|spare| {
        let copy = spare.take().expect("the dropped copy is the spare");
        assert!(copy.data.is_none());
        assert!(copy.extensions.get::<Tag>().is_none());
        assert!(copy.bytes.is_empty());
        spare.set(Some(copy));
    });
}

#[test]
fn the_token_is_not_copied_and_debug_hides_the_headers() {
    let request = http::Request::get("/")
        .header("authorization", "Bearer very-secret")
        .header("x-api-key", "also-secret")
        .body(())
        .unwrap();
    let copy = KeptRequest::copy(&request).unwrap();
    assert!(!copy.copied().bytes.windows(11).any(|w| w == b"very-secret"));
    assert!(!format!("{copy:?}").contains("also-secret"));
}
