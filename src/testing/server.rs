//! The fake's HTTP side: the accept loop, the two endpoints, and their state.

use std::{
    collections::{HashMap, VecDeque},
    convert::Infallible,
    hash::{BuildHasher, RandomState},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use serde_json::{Value, json};
use tokio::{net::TcpListener, sync::watch, task::JoinSet, time::Instant};

use super::TokenFailure;
use crate::ClientId;

const TOKEN_PATH: &str = "/open/api/v1/access_token";
pub(super) const DEMO_PATH: &str = "/api/demo";

pub(super) struct FakeState {
    pub(super) client_id: ClientId,
    pub(super) client_secret: String,
    pub(super) control: Mutex<FakeControl>,
    /// Counts that tests can wait on.
    pub(super) token_calls: watch::Sender<u64>,
    pub(super) tokens_issued: AtomicU64,
    pub(super) demo_calls: watch::Sender<u64>,
    pub(super) rejected_demo_calls: AtomicU64,
    /// While `true`, requests are counted, then wait before they are answered.
    pub(super) hold_tokens: watch::Sender<bool>,
    pub(super) hold_demo: watch::Sender<bool>,
    pub(super) seed: RandomState,
}

pub(super) struct FakeControl {
    pub(super) token_lifetime: Duration,
    pub(super) delay: Duration,
    pub(super) failures: VecDeque<TokenFailure>,
    /// Every valid token issued, with its expiry.
    pub(super) tokens: HashMap<String, Instant>,
}

pub(super) async fn serve(listener: TcpListener, state: Arc<FakeState>) {
    let mut connections = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of file descriptors, say: do not spin.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let state = Arc::clone(&state);
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let state = Arc::clone(&state);
                async move { Ok::<_, Infallible>(state.handle(request).await) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
        // Reap finished connections so the set does not grow without bound.
        while connections.try_join_next().is_some() {}
    }
}

impl FakeState {
    pub(super) fn lock(&self) -> MutexGuard<'_, FakeControl> {
        self.control.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn is_valid(&self, token: &str) -> bool {
        self.lock()
            .tokens
            .get(token)
            .is_some_and(|expires_at| Instant::now() < *expires_at)
    }

    async fn handle(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        match (request.method(), request.uri().path()) {
            (&Method::POST, TOKEN_PATH) => self.token(request).await,
            (&Method::POST, DEMO_PATH) => self.demo(request).await,
            (_, TOKEN_PATH | DEMO_PATH) => envelope(
                StatusCode::METHOD_NOT_ALLOWED,
                json!({"code": 405, "message": "method not allowed"}),
            ),
            _ => envelope(
                StatusCode::NOT_FOUND,
                json!({"code": 404, "message": "not found"}),
            ),
        }
    }

    async fn token(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        self.token_calls.send_modify(|calls| *calls += 1);
        released(&self.hold_tokens).await;
        let (delay, failure) = {
            let mut control = self.lock();
            (control.delay, control.failures.pop_front())
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        match failure {
            Some(TokenFailure::Status(status)) => {
                let message = status.canonical_reason().unwrap_or("error");
                return envelope(status, json!({"code": status.as_u16(), "message": message}));
            }
            Some(TokenFailure::Code { code, message }) => {
                return envelope(
                    StatusCode::OK,
                    json!({"code": code, "message": message, "data": null}),
                );
            }
            None => {}
        }
        let Ok(body) = request.into_body().collect().await else {
            return bad_request("the request body could not be read");
        };
        let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(&body.to_bytes()) else {
            return bad_request("the request body must be a JSON object");
        };
        let (Some(client_id), Some(Value::String(secret))) =
            (body.get("client_id"), body.get("client_secret"))
        else {
            return bad_request("client_id and client_secret are required");
        };
        if !self.client_id_matches(client_id) || *secret != self.client_secret {
            return envelope(
                StatusCode::OK,
                json!({"code": 401, "message": "invalid client_id or client_secret", "data": null}),
            );
        }
        let (access_token, lifetime) = self.issue();
        envelope(
            StatusCode::OK,
            json!({
                "code": 200,
                "message": "success",
                "data": {
                    "token": {
                        "token_type": "Bearer",
                        "expires_in": lifetime.as_secs(),
                        "access_token": access_token,
                    },
                    "userInfo": {"id": 2, "account": "test007", "score": "461.74970"},
                },
            }),
        )
    }

    fn client_id_matches(&self, sent: &Value) -> bool {
        let sent = match sent {
            Value::Number(n) => n.to_string(),
            Value::String(s) => s.clone(),
            _ => return false,
        };
        match &self.client_id {
            ClientId::Number(n) => sent == n.to_string(),
            ClientId::Text(s) => sent == *s,
        }
    }

    /// A fresh, unique, JWT-shaped token, recorded as valid for the configured lifetime.
    fn issue(&self) -> (String, Duration) {
        let serial = self.tokens_issued.fetch_add(1, Ordering::SeqCst) + 1;
        let now_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut control = self.lock();
        // `expires_in` counts whole seconds: the token lives as long as it says, rounded up.
        let configured = control.token_lifetime;
        let seconds = configured.as_secs() + u64::from(configured.subsec_nanos() > 0);
        let lifetime = Duration::from_secs(seconds.max(1));
        let header = base64url(br#"{"typ":"JWT","alg":"RS256"}"#);
        let claims = json!({
            "aud": self.client_id_text(),
            "jti": format!("{serial}-{:016x}", self.seed.hash_one(serial)),
            "iat": now_unix,
            "exp": now_unix + lifetime.as_secs(),
            "sub": "2",
            "scopes": [],
        });
        let payload = base64url(claims.to_string().as_bytes());
        let signature: Vec<u8> = (0..4u64)
            .flat_map(|i| self.seed.hash_one((serial, i)).to_le_bytes())
            .collect();
        let token = format!("{header}.{payload}.{}", base64url(&signature));
        control
            .tokens
            .insert(token.clone(), Instant::now() + lifetime);
        (token, lifetime)
    }

    fn client_id_text(&self) -> String {
        match &self.client_id {
            ClientId::Number(n) => n.to_string(),
            ClientId::Text(s) => s.clone(),
        }
    }

    async fn demo(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        self.demo_calls.send_modify(|calls| *calls += 1);
        released(&self.hold_demo).await;
        let token = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, token) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            });
        // Refuse before reading the body, as real servers may.
        if !token.is_some_and(|t| self.is_valid(t)) {
            self.rejected_demo_calls.fetch_add(1, Ordering::SeqCst);
            let mut response = envelope(
                StatusCode::UNAUTHORIZED,
                json!({"code": 401, "message": "invalid or expired access token"}),
            );
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static(r#"Bearer error="invalid_token""#),
            );
            return response;
        }
        match request.into_body().collect().await {
            Ok(body) => {
                let mut response = Response::new(Full::new(body.to_bytes()));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
                response
            }
            Err(_) => bad_request("the request body could not be read"),
        }
    }
}

/// Waits while `hold` is set.
async fn released(hold: &watch::Sender<bool>) {
    let _ = hold.subscribe().wait_for(|held| !held).await;
}

fn envelope(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

fn bad_request(message: &str) -> Response<Full<Bytes>> {
    envelope(
        StatusCode::BAD_REQUEST,
        json!({"code": 400, "message": message}),
    )
}

/// Unpadded base64url, as in JWTs.
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::base64url;

    #[test]
    fn base64url_matches_the_rfc_4648_vectors() {
        for (input, expected) in [
            ("", ""),
            ("f", "Zg"),
            ("fo", "Zm8"),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg"),
            ("fooba", "Zm9vYmE"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64url(input.as_bytes()), expected);
        }
        assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
    }
}
