use super::*;

fn scrub(secret: &str, text: &str) -> String {
    Redactions::new(secret, &http::HeaderMap::new()).scrub(text)
}

#[test]
fn a_secret_is_hidden_in_every_encoding_servers_echo_it_in() {
    let secret = "Zm9v/Ym<F>y+&cAR\"é x*!~'==";
    for echoed in [
        secret,
        // serde_json, PHP (`\/`, `\u00e9`), Go (`\u003c`..), .NET (`\u002B`, uppercase).
        r#"Zm9v/Ym<F>y+&cAR\"é x*!~'=="#,
        r#"Zm9v\/Ym<F>y+&cAR\"\u00e9 x*!~'=="#,
        r#"Zm9v/Ym\u003cF\u003ey+\u0026cAR\"é x*!~\u0027=="#,
        r#"Zm9v/Ym\u003CF\u003Ey\u002B\u0026cAR\u0022\u00E9 x*!~\u0027\u003D\u003D"#,
        // Percent-encoded: RFC 3986, WHATWG forms (`+`, `*` kept, `~` encoded),
        // `encodeURIComponent` (`!'()*~` kept), lowercase hex.
        "Zm9v%2FYm%3CF%3Ey%2B%26cAR%22%C3%A9%20x%2A%21~%27%3D%3D",
        "Zm9v%2FYm%3CF%3Ey%2B%26cAR%22%C3%A9+x*%21%7E%27%3D%3D",
        "Zm9v%2FYm%3CF%3Ey%2B%26cAR%22%C3%A9%20x*!~'%3D%3D",
        "Zm9v%2fYm%3cF%3ey%2b%26cAR%22%c3%a9%20x%2a%21~%27%3d%3d",
        // A form quoted inside JSON, and JSON percent-encoded.
        r#"Zm9v%2FYm%3CF%3Ey%2B%26cAR%22%C3%A9+x*%21%7E%27%3D%3D"#,
        "Zm9v%5C%2FYm%3CF%3Ey%2B%26cAR%5C%22%5Cu00e9%20x*!~'%3D%3D",
    ] {
        assert_eq!(
            scrub(secret, &format!("refused: {echoed}.")),
            "refused: [redacted].",
            "{echoed}"
        );
    }
}

#[test]
fn surrounding_text_and_other_characters_are_left_as_they_were() {
    assert_eq!(
        scrub("s3cr3t", r#"a\u00e9 b%2F s3cr3t, s3cr3ts3cr3t c"#),
        r#"a\u00e9 b%2F [redacted], [redacted] c"#
    );
    assert_eq!(scrub("s3cr3t", "no secret here é"), "no secret here é");
    assert_eq!(scrub("", "as is"), "as is");
    // Broken escapes are text like any other.
    assert_eq!(scrub("s3cr3t", r"\u12 %G1 \q \"), r"\u12 %G1 \q \");
    // A surrogate pair is one character.
    assert_eq!(scrub("k😀y", r"bad k\ud83d\ude00y"), "bad [redacted]");
}

#[test]
fn credential_headers_are_hidden_and_ordinary_ones_are_not() {
    let headers = [
        (
            HeaderName::from_static("x-api-key"),
            HeaderValue::from_static("gw-7f3a9c1e"),
        ),
        (
            HeaderName::from_static("x-auth-token"),
            HeaderValue::from_bytes(b"tok-\xe9-5b2d").unwrap(),
        ),
        (
            HeaderName::from_static("x-tenant"),
            HeaderValue::from_static("production"),
        ),
    ];
    let redactions = Redactions::new("s3cr3t", headers.iter().map(|(n, v)| (n, v)));
    assert_eq!(
        redactions.scrub("key gw-7f3a9c1e, token tok-%E9-5b2d, production, s3cr3t"),
        "key [redacted], token [redacted], production, [redacted]"
    );
}

#[test]
fn scrubbing_a_large_answer_stays_linear_enough() {
    // 64 KiB of near-misses: every window is compared, none matches.
    let text = "Zm9v%2".repeat(64 * 1024 / 6);
    assert_eq!(scrub("Zm9v%2FYmFy", &text), text);
}

#[test]
fn each_decoding_undoes_one_encoding_as_encoders_apply_them() {
    for (secret, echoed) in [
        // JSON leaves the secret's own `%XX` alone.
        ("p%41ss\"word", r#"p%41ss\"word"#),
        ("p%41sséword", r#"p%41ss\u00e9word"#),
        ("ab/cd%2Fef", r#"ab\/cd%2Fef"#),
        // JSON, then percent-encoded.
        ("a%41\"b", "a%2541%5C%22b"),
        // JSON, then a form: only the form's `+` is a space.
        (r"pass word+\x", "pass+word%2B%5C%5Cx"),
    ] {
        assert_eq!(
            scrub(secret, &format!("<{echoed}>")),
            "<[redacted]>",
            "{secret}: {echoed}"
        );
    }
}

#[test]
fn a_header_value_that_is_not_utf8_is_hidden_as_latin1_servers_echo_it() {
    let name = HeaderName::from_static("x-api-key");
    let value = HeaderValue::from_bytes(b"gw-\xe9-5b2d").unwrap();
    let redactions = Redactions::new("s3cr3t", [(&name, &value)]);
    for echoed in [
        "gw-é-5b2d",
        r"gw-\u00e9-5b2d",
        "gw-%C3%A9-5b2d",
        "gw-%E9-5b2d",
    ] {
        assert_eq!(
            redactions.scrub(&format!("bad key {echoed}")),
            "bad key [redacted]",
            "{echoed}"
        );
    }
}

#[test]
fn short_credential_header_values_are_not_hidden() {
    let name = HeaderName::from_static("x-auth-mode");
    let value = HeaderValue::from_static("basic");
    let redactions = Redactions::new("s3cr3t", [(&name, &value)]);
    assert_eq!(redactions.scrub("basic auth refused"), "basic auth refused");
}
