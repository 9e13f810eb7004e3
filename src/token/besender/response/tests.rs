use super::*;

const SECRET: &str = "s3cr3t-value";

fn secrets() -> Redactions {
    Redactions::new(SECRET, &http::HeaderMap::new())
}

fn parse_body(status: u16, body: &str) -> Result<Token, ParseError> {
    parse(
        StatusCode::from_u16(status).unwrap(),
        Some("application/json"),
        body.as_bytes(),
        Instant::now(),
        &secrets(),
    )
}

#[test]
fn code_may_be_a_numeric_string() {
    let body = r#"{"code":"200","data":{"token":{"token_type":"Bearer","access_token":"abc"}}}"#;
    assert!(parse_body(200, body).is_ok());
    let body = r#"{"code":"401","message":"no"}"#;
    let (kind, _) = parse_body(200, body).unwrap_err();
    assert!(matches!(
        kind,
        BesenderErrorKind::Rejected {
            code: Some(401),
            ..
        }
    ));
}

#[test]
fn a_code_that_is_not_a_number_is_invalid() {
    let (kind, _) = parse_body(200, r#"{"code":true}"#).unwrap_err();
    assert!(matches!(
        kind,
        BesenderErrorKind::InvalidField { field: "code", .. }
    ));
}

#[test]
fn a_json_value_that_is_not_an_object_is_invalid() {
    let (kind, _) = parse_body(200, "[1,2]").unwrap_err();
    assert!(matches!(kind, BesenderErrorKind::InvalidField { .. }));
    let (kind, _) = parse_body(503, "[1,2]").unwrap_err();
    assert!(matches!(
        kind,
        BesenderErrorKind::Rejected { code: None, .. }
    ));
}

#[test]
fn a_byte_order_mark_before_the_json_is_ignored() {
    let body = "\u{feff}{\"code\":200,\"data\":{\"token\":{\"token_type\":\"Bearer\",\"access_token\":\"abc\"}}}";
    assert!(parse_body(200, body).is_ok());
    // Only at the start, and only once.
    let (kind, _) = parse_body(200, &format!("\u{feff}{body}")).unwrap_err();
    assert!(matches!(kind, BesenderErrorKind::NotJson { .. }));
}

/// `1e400` is valid JSON, but no `f64`: the error says a number is too large, not that the
/// body is not JSON.
#[test]
fn a_number_too_large_to_read_is_named_as_such() {
    let body = r#"{"code":200,"data":{"token":{"token_type":"Bearer","access_token":"abc","expires_in":1e400}}}"#;
    let (kind, source) = parse_body(200, body).unwrap_err();
    match kind {
        BesenderErrorKind::InvalidField { field, reason } => {
            assert_eq!(field, "(response)");
            assert!(reason.contains("too large"), "{reason}");
            assert!(reason.contains("column"), "says where: {reason}");
        }
        other => panic!("{other:?}"),
    }
    assert!(source.is_some());
    // Malformed JSON is still not JSON.
    let (kind, _) = parse_body(200, r#"{"code":200,"#).unwrap_err();
    assert!(matches!(kind, BesenderErrorKind::NotJson { .. }));
}

#[test]
fn expiry_counts_from_when_the_request_was_sent() {
    let sent_at = Instant::now();
    let body = r#"{"code":200,"data":{"token":{"token_type":"Bearer","access_token":"abc","expires_in":120}}}"#;
    let token = parse(StatusCode::OK, None, body.as_bytes(), sent_at, &secrets()).unwrap();
    assert_eq!(token.expires_at(), sent_at + Duration::from_secs(120));
}

#[test]
fn echoed_text_is_scrubbed_of_the_secret_control_characters_and_length() {
    assert_eq!(echo("bad s3cr3t-value!", &secrets()), "bad [redacted]!");
    assert_eq!(echo("a\nb\u{7}c", &secrets()), "a b c");
    let long = "é".repeat(500);
    let echoed = echo(&long, &secrets());
    assert_eq!(echoed.chars().count(), MAX_ECHOED_CHARS + 1);
    assert!(echoed.ends_with('…'));
}

#[test]
fn the_longest_accepted_lifetime_is_one_year() {
    let year = MAX_TOKEN_LIFETIME.as_secs();
    let body = |secs: u64| {
        format!(
            r#"{{"code":200,"data":{{"token":{{"token_type":"Bearer","access_token":"abc","expires_in":{secs}}}}}}}"#
        )
    };
    assert!(parse_body(200, &body(year)).is_ok());
    assert!(parse_body(200, &body(year + 1)).is_err());
}

#[test]
fn a_decimal_expires_in_counts_its_whole_seconds() {
    let body = |secs: &str| {
        format!(
            r#"{{"code":200,"data":{{"token":{{"token_type":"Bearer","access_token":"abc","expires_in":{secs}}}}}}}"#
        )
    };
    let sent_at = Instant::now();
    let lifetime = |secs: &str| {
        parse(
            StatusCode::OK,
            None,
            body(secs).as_bytes(),
            sent_at,
            &secrets(),
        )
        .map(|token| token.expires_at() - sent_at)
    };
    assert_eq!(lifetime("86400.0").unwrap(), Duration::from_secs(86_400));
    assert_eq!(lifetime("3600.9").unwrap(), Duration::from_secs(3_600));
    assert_eq!(lifetime("1e3").unwrap(), Duration::from_secs(1_000));
    for absurd in ["0.5", "0.0", "-1.5", "1e30", "4e7"] {
        let (kind, _) = lifetime(absurd).unwrap_err();
        assert!(
            matches!(
                kind,
                BesenderErrorKind::InvalidField {
                    field: "data.token.expires_in",
                    ..
                }
            ),
            "{absurd}: {kind:?}"
        );
    }
}

#[test]
fn the_secret_is_scrubbed_as_it_went_out_inside_the_json_request() {
    let secret = "ab\"cd\\ef\u{1}";
    let request = serde_json::json!({ "client_id": 19, "client_secret": secret }).to_string();
    let echoed = echo(
        &format!("bad request: {request}"),
        &Redactions::new(secret, &http::HeaderMap::new()),
    );
    assert!(!echoed.contains(r#"ab\"cd"#), "{echoed}");
    assert!(echoed.contains("[redacted]"), "{echoed}");
}

/// Our own request, quoted back: serde_json escapes `\` and `"` but leaves the secret's `%XX`.
#[test]
fn a_secret_with_a_percent_triplet_is_scrubbed_from_the_quoted_request() {
    let secret = r"Kq%2Fz\9";
    let request = serde_json::json!({ "client_id": 19, "client_secret": secret }).to_string();
    let body = serde_json::json!({ "code": 400, "message": format!("bad request: {request}") });
    let (kind, _) = parse(
        StatusCode::BAD_REQUEST,
        Some("application/json"),
        body.to_string().as_bytes(),
        Instant::now(),
        &Redactions::new(secret, &http::HeaderMap::new()),
    )
    .unwrap_err();
    let shown = format!("{kind:?}");
    assert!(!shown.contains("Kq%2Fz"), "{shown}");
    assert!(shown.contains("[redacted]"), "{shown}");
}

/// An access token in the answer is hidden wherever the answer's text is quoted in an error:
/// a misconfigured server may put the header value in `token_type`, or quote the token in
/// the message of a refusal (ANCHORS: tokens in logs; a fetch failure is logged at WARN).
#[test]
fn the_answers_access_token_is_never_quoted() {
    const TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.payload-of-the-token.signature";
    let data = format!(r#"{{"token":{{"access_token":"{TOKEN}","token_type":"Bearer {TOKEN}"}}}}"#);
    let data_as_text = serde_json::to_string(&data).unwrap();
    let answers = [
        // The header value as the type.
        (200, format!(r#"{{"code":200,"data":{data}}}"#)),
        // `data` as a string holding the details, as the document types it.
        (200, format!(r#"{{"code":200,"data":{data_as_text}}}"#)),
        // A refusal quoting the token it sent along.
        (
            200,
            format!(r#"{{"code":500,"message":"bad token {TOKEN}","data":{data}}}"#),
        ),
        (
            503,
            format!(r#"{{"code":503,"message":"was {TOKEN}","data":{data_as_text}}}"#),
        ),
        (
            401,
            format!(r#"{{"error":"invalid_client","error_description":"{TOKEN}","data":{data}}}"#),
        ),
    ];
    for (status, body) in answers {
        let (kind, _) = parse_body(status, &body).unwrap_err();
        let shown = format!("{kind:?}");
        assert!(!shown.contains("payload-of-the-token"), "{shown}");
        assert!(
            shown.contains("[redacted]"),
            "the error says something was hidden: {shown}"
        );
    }
}

/// Any answer, well-formed or not: no panic, no secret and no answered token in the error,
/// and a token only with a plausible expiry.
mod any_answer {
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;

    const TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.the-answered-token.c2ln";

    /// Text a server may send back: plain, or quoting the secret or the token.
    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            "[ -~]{0,12}",
            Just(format!("echo {SECRET}")),
            Just(format!("bad token {TOKEN}")),
            Just(format!("Bearer {TOKEN}")),
            Just(String::new()),
        ]
    }

    /// A field's value, of any JSON type (`None`: absent); `specific` half the time, so that
    /// well-formed answers are common too.
    fn field(specific: impl Strategy<Value = Value> + 'static) -> BoxedStrategy<Option<Value>> {
        prop_oneof![
            1 => Just(None),
            1 => Just(Some(Value::Null)),
            8 => specific.prop_map(Some),
            1 => any::<bool>().prop_map(|b| Some(json!(b))),
            1 => any::<i64>().prop_map(|n| Some(json!(n))),
            1 => any::<f64>().prop_map(|f| Some(json!(f))),
            1 => text().prop_map(|t| Some(json!(t))),
            1 => Just(Some(json!([1, 2]))),
        ]
        .boxed()
    }

    fn expires_in() -> impl Strategy<Value = Value> {
        let limit = MAX_TOKEN_LIFETIME.as_secs();
        prop_oneof![
            1 => any::<u64>().prop_map(|n| json!(n)),
            2 => (1u64..100_000).prop_map(|n| json!(n)),
            1 => (1u64..100_000).prop_map(|n| json!(n.to_string())),
            // Either side of the limit.
            4 => (limit - 1000..limit + 1000).prop_map(|n| json!(n)),
            1 => Just(json!(" 86400 ")),
            1 => Just(json!("1e3")),
            1 => Just(json!(0.5)),
            1 => Just(json!(-3)),
        ]
    }

    fn put(map: &mut serde_json::Map<String, Value>, key: &str, value: Option<Value>) {
        if let Some(value) = value {
            map.insert(key.to_owned(), value);
        }
    }

    /// An envelope, and whether it carries `TOKEN` where the parser looks for the token.
    fn answer() -> impl Strategy<Value = (Value, bool)> {
        let token = (
            field(Just(json!(TOKEN))),
            field(prop_oneof![Just(json!("Bearer")), Just(json!(" bearer "))]),
            field(expires_in()),
        );
        let shape = (
            field(prop_oneof![
                Just(json!(200)),
                Just(json!("200")),
                Just(json!(401))
            ]),
            field(text().prop_map(Value::from)),
            field(text().prop_map(Value::from)),
            0u8..4,
        );
        (token, shape).prop_map(
            |((access, kind, expiry), (code, message, error, nesting))| {
                let carried = access.as_ref() == Some(&json!(TOKEN));
                let mut token = serde_json::Map::new();
                put(&mut token, "access_token", access);
                put(&mut token, "token_type", kind);
                put(&mut token, "expires_in", expiry);
                let token = Value::Object(token);
                // `data` and `data.token` as objects or as strings holding them.
                let token = if nesting & 1 == 1 {
                    json!(token.to_string())
                } else {
                    token
                };
                let data = json!({ "token": token, "userInfo": { "id": 2 } });
                let data = if nesting & 2 == 2 {
                    json!(data.to_string())
                } else {
                    data
                };
                let mut envelope = serde_json::Map::new();
                put(&mut envelope, "code", code);
                put(&mut envelope, "message", message);
                put(&mut envelope, "error", error);
                envelope.insert(
                    "error_description".into(),
                    json!(format!("{TOKEN} {SECRET}")),
                );
                envelope.insert("data".into(), data);
                (Value::Object(envelope), carried)
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 3000, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn an_answer_is_a_plausible_token_or_an_error_that_quotes_no_secret(
            (envelope, carried) in answer(),
            status in prop_oneof![Just(200u16), Just(201), Just(401), Just(500)],
        ) {
            // `parse_body` takes its own "sent at" between these two instants.
            let before = Instant::now();
            let parsed = parse_body(status, &envelope.to_string());
            let after = Instant::now();
            match parsed {
                Ok(token) => {
                    prop_assert!((200..300).contains(&status));
                    prop_assert!(token.expires_at() > before);
                    prop_assert!(token.expires_at() <= after + MAX_TOKEN_LIFETIME);
                }
                Err((kind, source)) => {
                    let shown = format!("{kind:?} {source:?}");
                    prop_assert!(!shown.contains(SECRET), "{}", shown);
                    if carried {
                        prop_assert!(!shown.contains("the-answered-token"), "{}", shown);
                    }
                }
            }
        }

        #[test]
        fn any_bytes_are_an_answer_or_an_error(
            body in proptest::collection::vec(any::<u8>(), 0..64),
            status in prop_oneof![Just(200u16), Just(500)],
        ) {
            let _ = parse(
                StatusCode::from_u16(status).unwrap(),
                Some("application/json"),
                &body,
                Instant::now(),
                &secrets(),
            );
        }
    }
}

#[test]
fn echoed_text_loses_controls_and_invisible_reordering_characters() {
    let secrets = secrets();
    let echoed = echo(
        "a\nb\u{2028}c\u{202E}d\u{200B}e\u{FEFF}f\u{2066}g\u{061C}h\u{2060}i\u{E0041}j 错误",
        &secrets,
    );
    assert_eq!(echoed, "a b c d e f g h i j 错误");
}
