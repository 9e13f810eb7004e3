//! What text from the token endpoint must never show: the client secret and the extra headers'
//! values (a gateway key), in every form a server may echo them in.
//!
//! A server that quotes the rejected request back (its body, a query string it was sent, the
//! key it refused) writes the secret in its own encoding: JSON escapes differ between
//! encoders (PHP writes `/` as `\/`, Go writes `<`, `>` and `&` as `\u003c`..), and a form or
//! URL carries it percent-encoded. Each secret is removed in all of these forms.

const REDACTED: &str = "[redacted]";

/// Extra header values shorter than this are not scrubbed: too short to be a key, and
/// scrubbing them (a tenant id `19`) would cut words out of every message.
const MIN_HEADER_SECRET: usize = 8;

/// The forms of every secret to scrub, longest first, so that a longer form is removed whole
/// before a shorter one inside it.
#[derive(Default)]
pub(crate) struct Redactions {
    forms: Vec<String>,
}

impl Redactions {
    /// The forms of `secret` (always scrubbed, however short) and of the extra header values.
    pub(crate) fn new<'a>(
        secret: &'a str,
        header_values: impl IntoIterator<Item = &'a [u8]>,
    ) -> Self {
        let mut forms = Vec::new();
        let headers = header_values
            .into_iter()
            .filter(|value| value.len() >= MIN_HEADER_SECRET)
            .map(String::from_utf8_lossy);
        for secret in std::iter::once(secret.into()).chain(headers) {
            if !secret.is_empty() {
                forms.extend(encodings(&secret));
            }
        }
        forms.retain(|form| !form.is_empty());
        forms.sort_by_key(|form| std::cmp::Reverse(form.len()));
        forms.dedup();
        Self { forms }
    }

    /// `text` with every form of every secret replaced by `[redacted]`.
    pub(crate) fn scrub(&self, text: &str) -> String {
        let mut text = text.to_owned();
        for form in &self.forms {
            if text.contains(form.as_str()) {
                text = text.replace(form.as_str(), REDACTED);
            }
        }
        text
    }
}

/// `secret` as written, JSON-escaped in the ways encoders differ, and percent-encoded.
fn encodings(secret: &str) -> Vec<String> {
    let json = serde_json::to_string(secret).unwrap_or_default();
    let json = json
        .strip_prefix('"')
        .and_then(|j| j.strip_suffix('"'))
        .unwrap_or_default()
        .to_owned();
    let slashes = json.replace('/', "\\/");
    // Go's `encoding/json`: HTML-safe escapes; PHP's `json_encode`: every non-ASCII character as
    // `\uXXXX` (UTF-16), and `/` as `\/`.
    let html_safe = json
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026");
    let ascii_only: String = json
        .chars()
        .flat_map(|c| match c.is_ascii() {
            true => vec![c.to_string()],
            false => {
                let mut units = [0u16; 2];
                c.encode_utf16(&mut units)
                    .iter()
                    .map(|unit| format!("\\u{unit:04x}"))
                    .collect()
            }
        })
        .collect();
    let php = ascii_only.replace('/', "\\/");
    let percent = percent_encode(secret, false);
    let form = percent_encode(secret, true);
    vec![
        secret.to_owned(),
        json,
        slashes,
        html_safe,
        ascii_only,
        php,
        lowercase_hex(&percent),
        percent,
        form,
    ]
}

/// Every byte outside RFC 3986's unreserved set as `%XX`; in a form, a space as `+`.
fn percent_encode(secret: &str, form: bool) -> String {
    let mut out = String::with_capacity(secret.len() * 3);
    for &byte in secret.as_bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(char::from(byte));
            }
            b' ' if form => out.push('+'),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

/// Percent-encoding with lowercase hex digits (RFC 3986 makes them equivalent).
fn lowercase_hex(encoded: &str) -> String {
    let mut out = String::with_capacity(encoded.len());
    let mut chars = encoded.chars();
    while let Some(c) = chars.next() {
        out.push(c);
        if c == '%' {
            out.extend(chars.by_ref().take(2).map(|h| h.to_ascii_lowercase()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_echoed_form_of_a_secret_is_scrubbed() {
        let secret = "Zm9v/Ym<F>y+&cAR\"é x==";
        let redactions = Redactions::new(secret, []);
        for echoed in [
            secret,
            r#"Zm9v/Ym<F>y+&cAR\"é x=="#,
            r#"Zm9v\/Ym<F>y+&cAR\"é x=="#,
            r#"Zm9v/Ym\u003cF\u003ey+\u0026cAR\"é x=="#,
            r#"Zm9v/Ym<F>y+&cAR\"\u00e9 x=="#,
            r#"Zm9v\/Ym<F>y+&cAR\"\u00e9 x=="#,
            "Zm9v%2FYm%3CF%3Ey%2B%26cAR%22%C3%A9%20x%3D%3D",
            "Zm9v%2fYm%3cF%3ey%2b%26cAR%22%c3%a9%20x%3d%3d",
            "Zm9v%2FYm%3CF%3Ey%2B%26cAR%22%C3%A9+x%3D%3D",
        ] {
            let scrubbed = redactions.scrub(&format!("refused: {echoed}."));
            assert_eq!(scrubbed, "refused: [redacted].", "{echoed}");
        }
    }

    #[test]
    fn header_values_are_scrubbed_unless_too_short_to_be_keys() {
        let redactions = Redactions::new("s3cr3t", [&b"gw-key-7f3a9c1e"[..], b"19"]);
        assert_eq!(
            redactions.scrub("key gw-key-7f3a9c1e for tenant 19 refused (s3cr3t)"),
            "key [redacted] for tenant 19 refused ([redacted])"
        );
        assert_eq!(Redactions::new("", []).scrub("as is"), "as is");
    }
}
