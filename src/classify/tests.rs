use super::*;
use http::HeaderValue;

fn refusal(status: u16, headers: &[(&'static str, &'static str)]) -> bool {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        map.append(*name, HeaderValue::from_static(value));
    }
    DefaultClassifier.is_refusal(StatusCode::from_u16(status).unwrap(), &map)
}

#[test]
fn plain_401_is_a_refusal() {
    assert!(refusal(401, &[]));
    assert!(refusal(401, &[("www-authenticate", "Bearer")]));
    assert!(refusal(
        401,
        &[("www-authenticate", r#"Bearer realm="api""#)]
    ));
}

#[test]
fn invalid_token_is_a_refusal() {
    assert!(refusal(
        401,
        &[(
            "www-authenticate",
            r#"Bearer realm="x", error="invalid_token", error_description="expired""#
        )]
    ));
    assert!(refusal(
        401,
        &[("www-authenticate", "bearer error=invalid_token")]
    ));
}

#[test]
fn insufficient_scope_and_invalid_request_are_not() {
    assert!(!refusal(
        401,
        &[(
            "www-authenticate",
            r#"Bearer error="insufficient_scope", scope="admin""#
        )]
    ));
    assert!(!refusal(
        401,
        &[("www-authenticate", r#"Bearer error="invalid_request""#)]
    ));
    assert!(!refusal(
        401,
        &[
            ("www-authenticate", r#"Basic realm="x""#),
            ("www-authenticate", r#"Bearer error="insufficient_scope""#)
        ]
    ));
}

#[test]
fn an_error_of_another_scheme_does_not_count() {
    assert!(refusal(
        401,
        &[(
            "www-authenticate",
            r#"Newauth realm="x", error="insufficient_scope", Bearer"#
        )]
    ));
}

#[test]
fn a_401_that_offers_only_other_schemes_is_a_refusal() {
    // DESIGN.md decision 8: only a Bearer challenge's `insufficient_scope` or `invalid_request`
    // says a new token cannot help. A server checking bearer tokens may name its own scheme,
    // and a 401 that is not a refusal would leave the refused token cached until it expires.
    for challenge in [
        r#"Basic realm="api""#,
        r#"Digest realm="api", nonce="abc", qop="auth""#,
        "Negotiate",
        r#"Token realm="api""#,
        r#"Basic realm="api", error="insufficient_scope""#,
    ] {
        assert!(
            refusal(401, &[("www-authenticate", challenge)]),
            "{challenge}"
        );
    }
    // Bearer among them, in one value or another, is a refusal.
    assert!(refusal(
        401,
        &[(
            "www-authenticate",
            r#"Basic realm="api", Bearer realm="api""#
        )]
    ));
    assert!(refusal(
        401,
        &[
            ("www-authenticate", r#"Basic realm="api""#),
            ("www-authenticate", r#"Bearer error="invalid_token""#),
        ]
    ));
    // An empty or malformed value offers no scheme: as if absent.
    for garbage in ["", "\"", "=", " , ,", "===", ";", "(", "@", "/", "{}", ":"] {
        assert!(
            refusal(401, &[("www-authenticate", garbage)]),
            "{garbage:?}"
        );
    }
}

#[test]
fn a_bearer_challenge_with_obs_text_still_counts() {
    // Obs-text in another challenge of the same value does not hide the Bearer one after it.
    let mut map = HeaderMap::new();
    map.append(
        WWW_AUTHENTICATE,
        HeaderValue::from_bytes(b"Basic realm=\"B\xfccher\", Bearer error=\"insufficient_scope\"")
            .unwrap(),
    );
    assert!(!DefaultClassifier.is_refusal(StatusCode::UNAUTHORIZED, &map));
    let mut map = HeaderMap::new();
    map.append(
        WWW_AUTHENTICATE,
        HeaderValue::from_bytes(b"Bearer realm=\"\xfc\", error=\"insufficient_scope\"").unwrap(),
    );
    assert!(!DefaultClassifier.is_refusal(StatusCode::UNAUTHORIZED, &map));
}

#[test]
fn other_statuses_are_not_refusals() {
    for status in [200, 400, 403, 404, 407, 500] {
        assert!(!refusal(status, &[]), "{status}");
    }
}

#[test]
fn grpc_unauthenticated_is_a_refusal_and_nothing_else_is() {
    assert!(refusal(200, &[("grpc-status", "16")]));
    assert!(!refusal(200, &[("grpc-status", "7")]));
    assert!(!refusal(200, &[("grpc-status", "0")]));
    assert!(!refusal(200, &[("grpc-status", "160")]));
}

#[test]
fn malformed_challenges_never_panic() {
    for value in [
        "",
        ",,,",
        "=",
        "\"",
        "Bearer error=\"unterminated",
        "Bearer error=",
        "Bearer ===",
        "Basic YWxhZGRpbjpvcGVuc2VzYW1l==, Bearer error=\"invalid_token\"",
        "\\\"é\"",
    ] {
        let _ = bearer_errors(value);
    }
    assert_eq!(
        bearer_errors("Basic YWxhZGRpbjpvcGVuc2VzYW1l==, Bearer error=\"invalid_token\""),
        ["invalid_token"]
    );
    assert_eq!(bearer_errors(r#"Bearer error="a\"b""#), ["a\"b"]);
}
