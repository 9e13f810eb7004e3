//! [`AuthServer`]: a business API on 127.0.0.1 that refuses the tokens it is told to.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use tokio::{net::TcpListener, task::JoinHandle};

use super::{Frames, serve};

/// A request as [`AuthServer`] saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub authorization: Option<String>,
    pub body_hash: u64,
    pub body_len: usize,
}

pub fn hash_bytes(bytes: &[u8]) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    BuildHasherDefault::<DefaultHasher>::default().hash_one(bytes)
}

/// A business API on 127.0.0.1 that reads every request body in full, records it, and refuses
/// the bearer tokens it is told to (HTTP 401, `Bearer error="invalid_token"`); otherwise it
/// echoes the body.
pub struct AuthServer {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    refused: Arc<Mutex<Vec<String>>>,
    /// Refuse every other request, whatever its token (a stale backend behind a balancer).
    by_turns: Arc<std::sync::atomic::AtomicBool>,
    /// The status of a refusal: 401 (with a `Bearer` challenge) unless told otherwise.
    refusal_status: Arc<std::sync::atomic::AtomicU16>,
    task: JoinHandle<()>,
}

impl AuthServer {
    pub async fn start() -> Self {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let refused = Arc::new(Mutex::new(Vec::<String>::new()));
        let (log, deny) = (Arc::clone(&seen), Arc::clone(&refused));
        let by_turns = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let turns = Arc::clone(&by_turns);
        let refusal_status = Arc::new(std::sync::atomic::AtomicU16::new(401));
        let status = Arc::clone(&refusal_status);
        let task = serve(listener, move |parts, body| {
            let authorization = parts
                .headers
                .get(http::header::AUTHORIZATION)
                .map(|v| v.to_str().unwrap().to_owned());
            let n = {
                let mut log = log.lock().unwrap();
                log.push(Seen {
                    authorization: authorization.clone(),
                    body_hash: hash_bytes(&body),
                    body_len: body.len(),
                });
                log.len()
            };
            let refused = match &authorization {
                _ if turns.load(std::sync::atomic::Ordering::SeqCst) => n % 2 == 1,
                None => true,
                Some(a) => deny
                    .lock()
                    .unwrap()
                    .iter()
                    .any(|t| a == &format!("Bearer {t}")),
            };
            let mut response = if refused {
                let mut r = Response::new(Frames::exact(Bytes::new()));
                let status = status.load(std::sync::atomic::Ordering::SeqCst);
                *r.status_mut() = StatusCode::from_u16(status).unwrap();
                if status == 401 {
                    r.headers_mut().insert(
                        http::header::WWW_AUTHENTICATE,
                        HeaderValue::from_static(r#"Bearer error="invalid_token""#),
                    );
                }
                r
            } else {
                Response::new(Frames::exact(body))
            };
            response
                .headers_mut()
                .insert("x-served-by", HeaderValue::from_static("auth-server"));
            std::future::ready(response)
        });
        Self {
            addr,
            seen,
            refused,
            by_turns,
            refusal_status,
            task,
        }
    }

    /// Refuses tokens with `status` from now on (401, with a `Bearer` challenge, by default).
    pub fn refuse_with(&self, status: u16) {
        self.refusal_status
            .store(status, std::sync::atomic::Ordering::SeqCst);
    }

    /// From now on refuses every other request (the 1st, 3rd, ... it has seen), whatever its
    /// token, and accepts the rest.
    pub fn refuse_by_turns(&self) {
        self.by_turns
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn url(&self) -> String {
        format!("http://{}/api", self.addr)
    }

    /// Refuses `token` from now on.
    pub fn refuse(&self, token: &str) {
        self.refused.lock().unwrap().push(token.to_owned());
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for AuthServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
