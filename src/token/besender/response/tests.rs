use super::*;

const SECRET: &str = "s3cr3t-value";

fn parse_body(status: u16, body: &str) -> Result<Token, ParseError> {
    parse(
        StatusCode::from_u16(status).unwrap(),
        Some("application/json"),
        body.as_bytes(),
        Instant::now(),
        SECRET,
    )
}

#[test]
fn code_may_be_a_numeric_string() {
    let body = r#"{"code":"200","data":{"token":{"access_token":"abc"}}}"#;
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
fn expiry_counts_from_when_the_request_was_sent() {
    let sent_at = Instant::now();
    let body = r#"{"code":200,"data":{"token":{"access_token":"abc","expires_in":120}}}"#;
    let token = parse(StatusCode::OK, None, body.as_bytes(), sent_at, SECRET).unwrap();
    assert_eq!(token.expires_at(), sent_at + Duration::from_secs(120));
}

#[test]
fn echoed_text_is_scrubbed_of_the_secret_control_characters_and_length() {
    assert_eq!(echo("bad s3cr3t-value!", SECRET), "bad [redacted]!");
    assert_eq!(echo("a\nb\u{7}c", SECRET), "a b c");
    let long = "é".repeat(500);
    let echoed = echo(&long, SECRET);
    assert_eq!(echoed.chars().count(), MAX_ECHOED_CHARS + 1);
    assert!(echoed.ends_with('…'));
}

#[test]
fn the_longest_accepted_lifetime_is_one_year() {
    let year = MAX_TOKEN_LIFETIME.as_secs();
    let body = |secs: u64| {
        format!(r#"{{"code":200,"data":{{"token":{{"access_token":"abc","expires_in":{secs}}}}}}}"#)
    };
    assert!(parse_body(200, &body(year)).is_ok());
    assert!(parse_body(200, &body(year + 1)).is_err());
}
