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

mod properties {
    use proptest::prelude::*;

    use super::scrub;

    /// `s` as a JSON encoder writes it: `ascii` escapes every non-ASCII character (PHP,
    /// Python), `slash` escapes `/` (PHP), `upper` writes hex digits in uppercase (.NET).
    fn json(s: &str, ascii: bool, slash: bool, upper: bool) -> String {
        let mut out = String::new();
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '/' if slash => out.push_str("\\/"),
                c if u32::from(c) < 0x20 || (ascii && !c.is_ascii()) => {
                    for unit in c.encode_utf16(&mut [0; 2]) {
                        match upper {
                            true => out.push_str(&format!("\\u{unit:04X}")),
                            false => out.push_str(&format!("\\u{unit:04x}")),
                        }
                    }
                }
                c => out.push(c),
            }
        }
        out
    }

    /// `s` percent-encoded, but for the ASCII letters, digits and `kept`; `plus` writes a
    /// space as `+` (a form).
    fn percent(s: &str, kept: &str, plus: bool, lower: bool) -> String {
        let mut out = String::new();
        for byte in s.bytes() {
            match byte {
                b if b.is_ascii_alphanumeric() || kept.as_bytes().contains(&b) => {
                    out.push(char::from(b))
                }
                b' ' if plus => out.push('+'),
                b if lower => out.push_str(&format!("%{b:02x}")),
                b => out.push_str(&format!("%{b:02X}")),
            }
        }
        out
    }

    fn encoded(s: &str, encoder: u8) -> String {
        match encoder {
            0 => s.to_owned(),
            1 => json(s, false, false, false),
            2 => json(s, true, true, false),
            3 => json(s, true, false, true),
            4 => percent(s, "-._~", false, false),
            5 => percent(s, "*-._", true, false),
            _ => percent(s, "-_.!~*'()", false, true),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

        /// Whatever two of the encoders above a server applies, the secret is hidden.
        #[test]
        fn a_secret_encoded_twice_is_hidden(
            secret in "[a-zA-Z0-9%+/\\\\\"é😀 ]{1,12}",
            first in 0u8..7,
            second in 0u8..7,
        ) {
            let echoed = encoded(&encoded(&secret, first), second);
            prop_assert_eq!(scrub(&secret, &format!("<{echoed}>")), "<[redacted]>", "{}", echoed);
        }

        /// No text or secret makes scrubbing panic.
        #[test]
        fn scrubbing_never_panics(
            secret in proptest::collection::vec(any::<u8>(), 0..8),
            text in "(\\\\|%|u|[0-9a-fA-F]|\\+|é|😀|D|d|x)*",
        ) {
            let name = http::HeaderName::from_static("x-api-key");
            let value = http::HeaderValue::from_bytes(&secret)
                .unwrap_or(http::HeaderValue::from_static("k"));
            let _ = super::Redactions::new("", [(&name, &value)]).scrub(&text);
            let _ = scrub(&String::from_utf8_lossy(&secret), &text);
        }
    }
}
