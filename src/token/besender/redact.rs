//! What text from the token endpoint must never show: the client secret, the values of the
//! extra headers that carry credentials (a gateway key), and an access token the same answer
//! carries, however the server encoded them.
//!
//! A server that quotes the refused request back (its body, a query string, the key it
//! refused) writes the secret in its own encoding, and encoders differ: JSON escapes (`\/`,
//! `\u002B`, `\u00E9` in either case, surrogate pairs), percent-encoding (either case, with or
//! without `+` for a space), and either of those applied to the other. Rather than list every
//! encoder's output, the text is decoded, up to twice and one encoding at a time, into views
//! that remember, for each decoded byte, the span of the text it came from; a secret found in
//! any view hides those spans.

use http::{HeaderName, HeaderValue};

const REDACTED: &str = "[redacted]";

/// Extra headers whose values are scrubbed: names that say they carry a credential. Others (a
/// tenant id, an environment name) are ordinary words that must stay readable in messages.
const CREDENTIAL_NAMES: &[&str] = &[
    "auth",
    "key",
    "token",
    "secret",
    "pass",
    "cookie",
    "sign",
    "credential",
    "session",
];

/// Credential header values shorter than this are not scrubbed: no key is that short, and
/// hiding every `true` or `1` would cut words out of every message.
const MIN_HEADER_SECRET: usize = 8;

/// How many times the text is decoded: a message that quotes a JSON body that quoted a form.
const DECODINGS: usize = 2;

/// The secrets to hide, as bytes (a header value may not be UTF-8), each once.
pub(crate) struct Redactions {
    secrets: Vec<Vec<u8>>,
}

impl Redactions {
    /// `secret` (always hidden, however short) and the values of the `headers` whose names
    /// say they carry a credential.
    pub(crate) fn new<'a>(
        secret: &str,
        headers: impl IntoIterator<Item = (&'a HeaderName, &'a HeaderValue)>,
    ) -> Self {
        let credentials = headers
            .into_iter()
            .filter(|(name, value)| is_credential(name) && value.len() >= MIN_HEADER_SECRET)
            .flat_map(|(_, value)| {
                let bytes = value.as_bytes();
                // Not UTF-8: servers that read header bytes as ISO-8859-1 (WSGI, servlets,
                // Node) echo each byte as the character of that code point.
                let latin1 = std::str::from_utf8(bytes)
                    .is_err()
                    .then(|| bytes.iter().map(|&b| char::from(b)).collect::<String>());
                std::iter::once(bytes.to_vec()).chain(latin1.map(String::into_bytes))
            });
        let secrets: Vec<Vec<u8>> = std::iter::once(secret.as_bytes().to_vec())
            .chain(credentials)
            .filter(|secret| !secret.is_empty())
            .collect();
        Self::from_secrets(secrets)
    }

    /// `secrets`, longest first (so a secret inside a longer one hides no less), each once.
    fn from_secrets(mut secrets: Vec<Vec<u8>>) -> Self {
        secrets.sort_unstable_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        secrets.dedup();
        Self { secrets }
    }

    /// These secrets and `token`, an access token in the answer whose text is about to be quoted
    /// (a server may quote it in its message, or send the header value as the token type).
    /// Hidden however short, as the client secret is: unlike a header value it is known to be
    /// a credential, and the cost of hiding a short one is only a less readable message.
    pub(crate) fn and_token(&self, token: &str) -> Self {
        let mut secrets = self.secrets.clone();
        if !token.is_empty() {
            secrets.push(token.as_bytes().to_vec());
        }
        Self::from_secrets(secrets)
    }

    /// `text` with every stretch that is, or decodes to, a secret replaced by `[redacted]`.
    pub(crate) fn scrub(&self, text: &str) -> String {
        // Each decoding undoes one encoding, as encoders apply them: JSON escapes alone (a JSON
        // encoder leaves `%` as it is), percent-encoding alone, or a form's (`+` a space).
        // Every view is searched; those decoded from it are the next level's.
        let mut hidden = Vec::new();
        let mut level = vec![View::of(text)];
        for decoding in 0..=DECODINGS {
            for view in &level {
                for secret in &self.secrets {
                    view.find(secret, &mut hidden);
                }
            }
            if decoding < DECODINGS {
                level = level
                    .iter()
                    .flat_map(|view| Decoder::ALL.iter().filter_map(|&d| view.decoded(d)))
                    .collect();
            }
        }
        if hidden.is_empty() {
            return text.to_owned();
        }
        // On character boundaries (a secret that is not UTF-8 may match part of a character:
        // the whole character goes), sorted, and merged where they overlap or touch.
        let mut hidden: Vec<(usize, usize)> = hidden
            .into_iter()
            .map(|(start, end)| (floor_boundary(text, start), ceil_boundary(text, end)))
            .collect();
        hidden.sort_unstable();
        let mut merged: Vec<(usize, usize)> = Vec::with_capacity(hidden.len());
        for (start, end) in hidden {
            match merged.last_mut() {
                Some(last) if start <= last.1 => last.1 = last.1.max(end),
                _ => merged.push((start, end)),
            }
        }
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for (start, end) in merged {
            out.push_str(&text[at..start]);
            out.push_str(REDACTED);
            at = end;
        }
        out.push_str(&text[at..]);
        out
    }
}

fn is_credential(name: &HeaderName) -> bool {
    CREDENTIAL_NAMES
        .iter()
        .any(|part| name.as_str().contains(part))
}

/// One encoding a server may have applied to what it echoes.
#[derive(Clone, Copy)]
enum Decoder {
    /// JSON string escapes: `\"`, `\/`, `\uXXXX` (either case, surrogate pairs).
    Json,
    /// Percent-encoding (RFC 3986), either case.
    Percent,
    /// A form (`application/x-www-form-urlencoded`): percent-encoding, and `+` for a space.
    Form,
}

impl Decoder {
    const ALL: [Decoder; 3] = [Decoder::Json, Decoder::Percent, Decoder::Form];
}

/// The text as bytes, each with the span `[start, end)` of the original text it stands for.
struct View {
    bytes: Vec<u8>,
    spans: Vec<(usize, usize)>,
}

impl View {
    fn of(text: &str) -> Self {
        Self {
            bytes: text.as_bytes().to_vec(),
            spans: (0..text.len()).map(|i| (i, i + 1)).collect(),
        }
    }

    /// Adds the original span of every occurrence of `secret` to `hidden`.
    fn find(&self, secret: &[u8], hidden: &mut Vec<(usize, usize)>) {
        if secret.len() > self.bytes.len() {
            return;
        }
        for (i, window) in self.bytes.windows(secret.len()).enumerate() {
            if window == secret {
                hidden.push((self.spans[i].0, self.spans[i + secret.len() - 1].1));
            }
        }
    }

    /// The view with one level of `decoder`'s encoding undone; `None` if there was nothing to
    /// decode.
    fn decoded(&self, decoder: Decoder) -> Option<Self> {
        if matches!(decoder, Decoder::Form) && !self.bytes.contains(&b'+') {
            // Without a `+`, a form decodes as percent-encoding alone: that view is made too.
            return None;
        }
        let (bytes, spans) = (&self.bytes, &self.spans);
        let mut out = Self {
            bytes: Vec::with_capacity(bytes.len()),
            spans: Vec::with_capacity(bytes.len()),
        };
        let mut changed = false;
        let mut i = 0;
        while i < bytes.len() {
            let (decoded, used) = match (bytes[i], decoder) {
                (b'\\', Decoder::Json) => json_escape(&bytes[i..]),
                (b'%', Decoder::Percent | Decoder::Form) => percent_escape(&bytes[i..]),
                (b'+', Decoder::Form) => (Some(vec![b' ']), 1),
                _ => (None, 1),
            };
            match decoded {
                Some(decoded) => {
                    changed = true;
                    let span = (spans[i].0, spans[i + used - 1].1);
                    for byte in decoded {
                        out.bytes.push(byte);
                        out.spans.push(span);
                    }
                    i += used;
                }
                None => {
                    out.bytes.push(bytes[i]);
                    out.spans.push(spans[i]);
                    i += 1;
                }
            }
        }
        changed.then_some(out)
    }
}

/// A JSON escape at the start of `at`: its bytes (UTF-8) and its length.
fn json_escape(at: &[u8]) -> (Option<Vec<u8>>, usize) {
    let simple = match at.get(1) {
        Some(b'"') => Some(b'"'),
        Some(b'\\') => Some(b'\\'),
        Some(b'/') => Some(b'/'),
        Some(b'b') => Some(0x08),
        Some(b'f') => Some(0x0c),
        Some(b'n') => Some(b'\n'),
        Some(b'r') => Some(b'\r'),
        Some(b't') => Some(b'\t'),
        _ => None,
    };
    if let Some(byte) = simple {
        return (Some(vec![byte]), 2);
    }
    let Some(unit) = unicode_unit(at) else {
        return (None, 1);
    };
    let (c, used) = match unicode_unit(&at[6..]) {
        // A surrogate pair: two escapes, one character.
        Some(low) if (0xd800..0xdc00).contains(&unit) && (0xdc00..0xe000).contains(&low) => {
            let c = 0x10000 + ((u32::from(unit) - 0xd800) << 10) + (u32::from(low) - 0xdc00);
            (char::from_u32(c), 12)
        }
        _ => (char::from_u32(u32::from(unit)), 6),
    };
    match c {
        Some(c) => (Some(c.to_string().into_bytes()), used),
        None => (None, 1),
    }
}

/// The code unit of a `\uXXXX` escape (hex digits in either case) at the start of `at`.
fn unicode_unit(at: &[u8]) -> Option<u16> {
    let digits = at.strip_prefix(b"\\u")?.get(..4)?;
    u16::from_str_radix(hex(digits)?, 16).ok()
}

/// `digits` if they are all hex digits (`from_str_radix` alone would take a sign).
fn hex(digits: &[u8]) -> Option<&str> {
    digits
        .iter()
        .all(u8::is_ascii_hexdigit)
        .then(|| std::str::from_utf8(digits).ok())
        .flatten()
}

/// A `%XX` escape (either case) at the start of `at`.
fn percent_escape(at: &[u8]) -> (Option<Vec<u8>>, usize) {
    let byte = at
        .get(1..3)
        .and_then(hex)
        .and_then(|digits| u8::from_str_radix(digits, 16).ok());
    match byte {
        Some(byte) => (Some(vec![byte]), 3),
        None => (None, 1),
    }
}

fn floor_boundary(text: &str, mut at: usize) -> usize {
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

fn ceil_boundary(text: &str, mut at: usize) -> usize {
    while !text.is_char_boundary(at) {
        at += 1;
    }
    at
}

#[cfg(test)]
mod tests;
