//! Reading Besender's token response.
//!
//! The document's envelope is `{code, message, data: {token: {token_type, expires_in,
//! access_token}, userInfo}}`. Everything here is defensive: the body may be anything a proxy or a
//! broken server can send, and the result is either a usable [`Token`] or an error kind that says
//! which field is wrong, without ever quoting the access token.

use std::time::Duration;

use http::StatusCode;
use serde_json::{Map, Value};
use tokio::time::Instant;

use super::redact::Redactions;
use crate::{
    error::{BesenderErrorKind, BoxError},
    token::{MAX_TOKEN_LIFETIME, Token},
};

/// `expires_in` when the response does not say: the document's 24 hours.
pub(crate) const DEFAULT_EXPIRES_IN: Duration = Duration::from_secs(24 * 60 * 60);

/// Besender's `code` for success.
const CODE_OK: i64 = 200;

/// Server-provided text kept in errors is cut to this many characters.
const MAX_ECHOED_CHARS: usize = 200;

pub(crate) type ParseError = (BesenderErrorKind, Option<BoxError>);

/// Turns a complete token response into a token that expires `expires_in` after `sent_at`.
///
/// `secrets` are scrubbed from any text the server sent back (a server that echoes the request
/// must not leak them into our error messages), and so is the access token the answer carries.
pub(crate) fn parse(
    status: StatusCode,
    content_type: Option<&str>,
    body: &[u8],
    sent_at: Instant,
    secrets: &Redactions,
) -> Result<Token, ParseError> {
    // RFC 8259 §8.1: a parser may ignore a byte order mark, which some backends (Java, .NET)
    // put before their JSON.
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    let envelope: Value = match serde_json::from_slice(body) {
        Ok(value) => value,
        Err(_) if !status.is_success() => return Err((rejected(status, None, None), None)),
        Err(err) => {
            // Valid JSON, but a number beyond an `f64` (`"expires_in": 1e400`; RFC 8259 §6 lets
            // a parser limit the range): the body is JSON, so say what is wrong with it instead.
            let text = err.to_string();
            if err.is_syntax() && text.starts_with("number out of range") {
                let reason = format!("a number is too large to read ({text})");
                let kind = BesenderErrorKind::InvalidField {
                    field: "(response)",
                    reason,
                };
                return Err((kind, Some(err.into())));
            }
            let kind = BesenderErrorKind::NotJson {
                status,
                content_type: content_type.map(|ct| echo(ct, secrets)),
            };
            return Err((kind, Some(err.into())));
        }
    };
    let Value::Object(envelope) = envelope else {
        if !status.is_success() {
            return Err((rejected(status, None, None), None));
        }
        return Err(invalid("(response)", "expected a JSON object"));
    };

    // `data` and `data.token`, read once. What is wrong with them is reported only once `code`
    // says success, but the token they carry is as secret as ours: it is scrubbed from any of
    // the answer's text quoted before that, whatever else is wrong with the answer.
    let data = object_field(&envelope, "data", "data");
    let token = data
        .as_ref()
        .ok()
        .map(|data| object_field(data, "token", "data.token"));
    let answered = token
        .as_ref()
        .and_then(|token| token.as_ref().ok()?.get("access_token")?.as_str());
    let with_token;
    let secrets = match answered {
        Some(answered) => {
            with_token = secrets.and_token(answered);
            &with_token
        }
        None => secrets,
    };
    let code = envelope.get("code").and_then(code_of);
    let message = envelope
        .get("message")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
        .map(|m| echo(m, secrets))
        .or_else(|| oauth_error(&envelope, secrets));
    if !status.is_success() {
        return Err((rejected(status, code, message), None));
    }
    match (envelope.get("code"), code) {
        (None | Some(Value::Null), _) => return Err(missing("code")),
        (Some(_), None) => return Err(invalid("code", "expected an integer")),
        (Some(_), Some(CODE_OK)) => {}
        (Some(_), Some(other)) => return Err((rejected(status, Some(other), message), None)),
    }

    let data = data?;
    let token = token.expect("`data` is an object")?;

    let access_token = match token.get("access_token") {
        None | Some(Value::Null) => return Err(missing("data.token.access_token")),
        Some(Value::String(s)) => s,
        Some(_) => return Err(invalid("data.token.access_token", "expected a string")),
    };
    let header = Token::check_access_token(access_token)
        .map_err(|why| invalid("data.token.access_token", why.reason()))?;

    match token.get("token_type") {
        // Required (RFC 6749 §5.1, and the document's response table), and a client must not
        // use a token whose type it does not know (§7.1): an absent or empty type is not Bearer.
        None | Some(Value::Null) => return Err(missing("data.token.token_type")),
        Some(Value::String(t)) if t.trim().is_empty() => {
            return Err(missing("data.token.token_type"));
        }
        // Matched case-insensitively (RFC 6749 §5.1); padding is sloppiness, not another scheme.
        Some(Value::String(t)) if t.trim().eq_ignore_ascii_case("bearer") => {}
        Some(Value::String(t)) => {
            return Err((
                BesenderErrorKind::UnsupportedTokenType {
                    token_type: echo(t, secrets),
                },
                None,
            ));
        }
        Some(_) => return Err(invalid("data.token.token_type", "expected a string")),
    }

    let lifetime = expires_in(token.get("expires_in"))?;
    let user_info = data.get("userInfo").filter(|v| !v.is_null()).cloned();
    Ok(Token::from_parts(Ok(header), sent_at + lifetime, user_info))
}

fn expires_in(value: Option<&Value>) -> Result<Duration, ParseError> {
    const FIELD: &str = "data.token.expires_in";
    let seconds = match value {
        None | Some(Value::Null) => return Ok(DEFAULT_EXPIRES_IN),
        Some(Value::Number(n)) => match (n.as_u64(), n.as_i64()) {
            (Some(s), _) => s,
            (None, Some(negative)) => {
                return Err(invalid_owned(
                    FIELD,
                    format!("must be a positive number of seconds, got {negative}"),
                ));
            }
            // A decimal (`86400.0`): JSON does not tell it from an integer. A fraction of a
            // second is dropped.
            // (`as` saturates: a huge value is refused as implausibly long below.)
            (None, None) => match n.as_f64() {
                Some(s) if s >= 1.0 => s as u64,
                Some(s) if s > 0.0 => {
                    return Err(invalid_owned(
                        FIELD,
                        format!("must be at least one second, got {n}"),
                    ));
                }
                _ => {
                    return Err(invalid_owned(
                        FIELD,
                        format!("must be a positive number of seconds, got {n}"),
                    ));
                }
            },
        },
        // A numeric string, as `code` may be (backends that stringify every number).
        Some(Value::String(text)) => {
            let digits = text.trim();
            match digits.parse::<u64>() {
                Ok(seconds) if digits.bytes().all(|b| b.is_ascii_digit()) => seconds,
                _ => return Err(invalid(FIELD, "expected an integer number of seconds")),
            }
        }
        Some(_) => return Err(invalid(FIELD, "expected an integer number of seconds")),
    };
    if seconds == 0 {
        return Err(invalid(
            FIELD,
            "must be a positive number of seconds, got 0",
        ));
    }
    if seconds > MAX_TOKEN_LIFETIME.as_secs() {
        return Err(invalid_owned(
            FIELD,
            format!(
                "{seconds} seconds is implausibly long (the limit is {} seconds, one year)",
                MAX_TOKEN_LIFETIME.as_secs()
            ),
        ));
    }
    Ok(Duration::from_secs(seconds))
}

/// An RFC 6749 §5.2 error (`{"error": "invalid_client", "error_description": "..."}`), as a
/// gateway or an OAuth server in front of Besender answers, for an envelope with no `message`.
fn oauth_error(envelope: &Map<String, Value>, secrets: &Redactions) -> Option<String> {
    let error = envelope
        .get("error")
        .and_then(Value::as_str)
        .filter(|e| !e.is_empty())?;
    let text = match envelope
        .get("error_description")
        .and_then(Value::as_str)
        .filter(|d| !d.is_empty())
    {
        Some(description) => format!("{error}: {description}"),
        None => error.to_owned(),
    };
    Some(echo(&text, secrets))
}

/// An object, or a string holding one (see [`object_field`]).
fn object_of(value: &Value) -> Option<Map<String, Value>> {
    match value {
        Value::Object(map) => Some(map.clone()),
        Value::String(text) => match serde_json::from_str(text) {
            Ok(Value::Object(map)) => Some(map),
            _ => None,
        },
        _ => None,
    }
}

/// Besender's `code` as an integer; tolerates a numeric string.
fn code_of(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// An object-valued field. The document types `data` as a string holding the details, and its
/// example sends an object: both are accepted.
fn object_field(
    parent: &Map<String, Value>,
    key: &str,
    path: &'static str,
) -> Result<Map<String, Value>, ParseError> {
    match parent.get(key) {
        None | Some(Value::Null) => Err(missing(path)),
        Some(value) => object_of(value).ok_or_else(|| invalid(path, "expected a JSON object")),
    }
}

fn rejected(status: StatusCode, code: Option<i64>, message: Option<String>) -> BesenderErrorKind {
    BesenderErrorKind::Rejected {
        status,
        code,
        message,
    }
}

fn missing(field: &'static str) -> ParseError {
    (BesenderErrorKind::MissingField { field }, None)
}

fn invalid(field: &'static str, reason: &str) -> ParseError {
    invalid_owned(field, reason.to_owned())
}

fn invalid_owned(field: &'static str, reason: String) -> ParseError {
    (BesenderErrorKind::InvalidField { field, reason }, None)
}

/// Server text made safe to put in an error: the secrets removed (see [`Redactions`]), control
/// characters replaced, and the length capped.
pub(crate) fn echo(text: &str, secrets: &Redactions) -> String {
    let scrubbed = secrets.scrub(text);
    let mut out: String = scrubbed
        .chars()
        .map(|c| if is_unsafe_to_echo(c) { ' ' } else { c })
        .take(MAX_ECHOED_CHARS)
        .collect();
    if scrubbed.chars().count() > MAX_ECHOED_CHARS {
        out.push('…');
    }
    out
}

/// Characters blanked in echoed text, which is quoted verbatim in errors and logs: controls
/// (a newline would forge a log line), and the invisible format characters and line
/// separators that reorder, hide or split what a reader sees (bidi marks and overrides, zero
/// width characters, tag characters, U+2028).
fn is_unsafe_to_echo(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061C}'
                | '\u{180E}'
                | '\u{200B}'..='\u{200F}'
                | '\u{2028}'..='\u{202E}'
                | '\u{2060}'..='\u{2069}'
                | '\u{FEFF}'
                | '\u{E0000}'..='\u{E007F}'
        )
}

#[cfg(test)]
mod tests;
