//! A fake Besender platform for tests: a real HTTP server on `127.0.0.1`.
//!
//! [`FakeBesender`] implements the token endpoint as Besender's document shows it and a protected
//! business endpoint, `POST /api/demo`. Put it in your own tests to exercise your client stack
//! end to end without the real platform:
//!
//! ```
//! use besender_auth::{BesenderTokenSource, TokenSource};
//! use besender_auth::testing::{FakeBesender, TokenFailure};
//! use http::StatusCode;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let fake = FakeBesender::start().await?;
//! let source = BesenderTokenSource::builder(fake.base_url())
//!     .client_id(fake.client_id())
//!     .client_secret(fake.client_secret())
//!     .build()?;
//!
//! // The next token call fails the way Besender reports a refusal: HTTP 200, code 500.
//! fake.fail_next_token_calls(1, TokenFailure::code(500, "service busy"));
//! let err = source.fetch().await.unwrap_err();
//! assert!(err.to_string().contains("code 500"));
//!
//! let token = source.fetch().await?;
//! assert_eq!(fake.token_calls(), 2);
//! assert!(fake.accepts(&token));
//! fake.revoke_all();
//! assert!(!fake.accepts(&token));
//! # Ok(()) }
//! ```
//!
//! # What it serves
//! - `POST /open/api/v1/access_token`: takes `{"client_id": .., "client_secret": ..}` (the ID as
//!   a number or a string with the same text). Right credentials: HTTP 200 and the document's
//!   envelope with a fresh, unique, JWT-shaped token, `expires_in` set to the configured
//!   lifetime, and a `userInfo` object. Wrong credentials: HTTP 200 with `code` 401. Malformed
//!   body: HTTP 400 with `code` 400.
//! - `POST /api/demo`: with a valid `Authorization: Bearer` token, echoes the request body as
//!   JSON; otherwise (missing, unknown, revoked or expired token) HTTP 401 with
//!   `WWW-Authenticate: Bearer error="invalid_token"`, answered before the request body is read.
//!
//! Token expiry uses Tokio's clock, so tests with a paused clock see tokens expire on time.
//! The server stops when the `FakeBesender` is dropped.

mod server;

use std::{
    collections::{HashMap, VecDeque},
    fmt,
    hash::RandomState,
    io,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use http::StatusCode;
use tokio::{net::TcpListener, sync::watch};

use self::server::{DEMO_PATH, FakeControl, FakeState, serve};
use crate::{ClientId, Token};

/// How [`FakeBesender`] fails a token call; see [`FakeBesender::fail_next_token_calls`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenFailure {
    /// Answer with this HTTP status and an envelope whose `code` is the same number.
    Status(StatusCode),
    /// Answer HTTP 200 with this Besender `code` and `message` (a refusal under HTTP 200).
    Code {
        /// Besender's `code`.
        code: i64,
        /// Besender's `message`.
        message: String,
    },
}

impl TokenFailure {
    /// A refusal under HTTP 200 with Besender `code` and `message`.
    pub fn code(code: i64, message: impl Into<String>) -> Self {
        TokenFailure::Code {
            code,
            message: message.into(),
        }
    }
}

/// Configures a [`FakeBesender`]; made by [`FakeBesender::builder`].
#[derive(Clone)]
pub struct FakeBesenderBuilder {
    client_id: ClientId,
    client_secret: String,
    token_lifetime: Duration,
}

impl fmt::Debug for FakeBesenderBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeBesenderBuilder")
            .field("client_id", &self.client_id)
            .field("client_secret", &"[redacted]")
            .field("token_lifetime", &self.token_lifetime)
            .finish()
    }
}

impl FakeBesenderBuilder {
    /// The client ID the server accepts. Default `19`, as in the document.
    pub fn client_id(mut self, client_id: impl Into<ClientId>) -> Self {
        self.client_id = client_id.into();
        self
    }

    /// The client secret the server accepts. Default: a fixed test secret.
    pub fn client_secret(mut self, client_secret: impl Into<String>) -> Self {
        self.client_secret = client_secret.into();
        self
    }

    /// The lifetime of issued tokens (`expires_in`). Default 24 h, as on the real platform.
    /// `expires_in` counts whole seconds: a lifetime with a fraction of a second is rounded up,
    /// to at least one second, and the server honours the token for exactly what it announced.
    pub fn token_lifetime(mut self, lifetime: Duration) -> Self {
        self.token_lifetime = lifetime;
        self
    }

    /// Binds `127.0.0.1:0` and starts serving HTTP/1.1 and HTTP/2 (h2c) on a Tokio task.
    ///
    /// # Errors
    /// If the listener cannot be bound.
    pub async fn start(self) -> io::Result<FakeBesender> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(FakeState {
            client_id: self.client_id,
            client_secret: self.client_secret,
            control: Mutex::new(FakeControl {
                token_lifetime: self.token_lifetime,
                delay: Duration::ZERO,
                failures: VecDeque::new(),
                tokens: HashMap::new(),
            }),
            token_calls: watch::Sender::new(0),
            tokens_issued: AtomicU64::new(0),
            demo_calls: watch::Sender::new(0),
            rejected_demo_calls: AtomicU64::new(0),
            hold_tokens: watch::Sender::new(false),
            hold_demo: watch::Sender::new(false),
            seed: RandomState::new(),
        });
        let server = tokio::spawn(serve(listener, Arc::clone(&state)));
        Ok(FakeBesender {
            addr,
            state,
            server,
        })
    }
}

/// A fake Besender platform on `127.0.0.1`; see the [module documentation](self).
pub struct FakeBesender {
    addr: SocketAddr,
    state: Arc<FakeState>,
    server: tokio::task::JoinHandle<()>,
}

impl FakeBesender {
    /// Starts a server with the defaults: client ID `19`, a fixed secret, 24 h tokens.
    ///
    /// # Errors
    /// If the listener cannot be bound.
    pub async fn start() -> io::Result<Self> {
        Self::builder().start().await
    }

    /// Starts configuring a server.
    pub fn builder() -> FakeBesenderBuilder {
        FakeBesenderBuilder {
            client_id: ClientId::Number(19),
            client_secret: "fake-besender-secret".to_owned(),
            token_lifetime: Duration::from_secs(24 * 60 * 60),
        }
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`: the base URL for
    /// [`BesenderTokenSource::builder`](crate::BesenderTokenSource::builder).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The URL of the protected business endpoint, `POST /api/demo`.
    pub fn demo_url(&self) -> String {
        format!("http://{}{DEMO_PATH}", self.addr)
    }

    /// The client ID the server accepts.
    pub fn client_id(&self) -> ClientId {
        self.state.client_id.clone()
    }

    /// The client secret the server accepts.
    pub fn client_secret(&self) -> String {
        self.state.client_secret.clone()
    }

    /// Requests to the token endpoint so far, failed ones included.
    pub fn token_calls(&self) -> u64 {
        *self.state.token_calls.borrow()
    }

    /// Tokens issued so far.
    pub fn tokens_issued(&self) -> u64 {
        self.state.tokens_issued.load(Ordering::SeqCst)
    }

    /// Requests to `/api/demo` so far, refused ones included.
    pub fn demo_calls(&self) -> u64 {
        *self.state.demo_calls.borrow()
    }

    /// Requests to `/api/demo` refused with HTTP 401 so far.
    pub fn rejected_demo_calls(&self) -> u64 {
        self.state.rejected_demo_calls.load(Ordering::SeqCst)
    }

    /// Fails the next `n` token calls with `failure` (added after any failures still queued).
    pub fn fail_next_token_calls(&self, n: usize, failure: TokenFailure) {
        let mut control = self.state.lock();
        control.failures.extend(std::iter::repeat_n(failure, n));
    }

    /// Delays every token answer by `delay` (on Tokio's clock). Zero, the default, answers at once.
    pub fn set_token_delay(&self, delay: Duration) {
        self.state.lock().delay = delay;
    }

    /// The lifetime of tokens issued from now on, rounded up to whole seconds as
    /// [`FakeBesenderBuilder::token_lifetime`] says.
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        self.state.lock().token_lifetime = lifetime;
    }

    /// Waits until the token endpoint has received at least `n` requests.
    pub async fn wait_for_token_calls(&self, n: u64) {
        let mut calls = self.state.token_calls.subscribe();
        let _ = calls.wait_for(|calls| *calls >= n).await;
    }

    /// Waits until `/api/demo` has received at least `n` requests.
    pub async fn wait_for_demo_calls(&self, n: u64) {
        let mut calls = self.state.demo_calls.subscribe();
        let _ = calls.wait_for(|calls| *calls >= n).await;
    }

    /// Holds token requests: from now on they are counted, then wait unanswered until
    /// [`release_token_calls`](Self::release_token_calls). For tests of what happens while a
    /// fetch is running, without timing.
    pub fn hold_token_calls(&self) {
        self.state.hold_tokens.send_replace(true);
    }

    /// Answers held token requests, and stops holding new ones.
    pub fn release_token_calls(&self) {
        self.state.hold_tokens.send_replace(false);
    }

    /// Holds `/api/demo` requests: from now on they are counted, then wait, before their token is
    /// checked, until [`release_demo_calls`](Self::release_demo_calls). With
    /// [`wait_for_demo_calls`](Self::wait_for_demo_calls) this puts requests in flight at a
    /// chosen moment, for example to revoke their token.
    pub fn hold_demo_calls(&self) {
        self.state.hold_demo.send_replace(true);
    }

    /// Lets held `/api/demo` requests go on, and stops holding new ones.
    pub fn release_demo_calls(&self) {
        self.state.hold_demo.send_replace(false);
    }

    /// Revokes every token issued so far: `/api/demo` refuses them from now on.
    pub fn revoke_all(&self) {
        self.state.lock().tokens.clear();
    }

    /// Whether `/api/demo` would accept `token` now.
    pub fn accepts(&self, token: &Token) -> bool {
        token
            .expose_access_token()
            .is_some_and(|t| self.accepts_access_token(t))
    }

    /// Whether `/api/demo` would accept this access token (the text after `Bearer `) now: for
    /// a protected server of your own, such as a tonic interceptor, that checks the tokens
    /// FakeBesender issued.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> std::io::Result<()> {
    /// use besender_auth::testing::FakeBesender;
    ///
    /// let fake = FakeBesender::start().await?;
    /// assert!(!fake.accepts_access_token("never-issued"));
    /// # Ok(()) }
    /// ```
    pub fn accepts_access_token(&self, access_token: &str) -> bool {
        self.state.is_valid(access_token)
    }
}

impl fmt::Debug for FakeBesender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeBesender")
            .field("addr", &self.addr)
            .field("client_id", &self.state.client_id)
            .field("token_calls", &self.token_calls())
            .field("demo_calls", &self.demo_calls())
            .finish_non_exhaustive()
    }
}

impl Drop for FakeBesender {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every connection.
        self.server.abort();
    }
}
