//! The built-in client speaks TLS (feature `rustls`, on by default): `https://` token endpoints
//! work without a client of the caller's, and a certificate that does not chain to a trusted
//! root is refused before anything is sent.
#![cfg(feature = "rustls")]

use std::{
    error::Error as _,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use besender_auth::{BesenderErrorKind, BesenderTokenSource, TokenSource};
use tokio::{io::AsyncReadExt, net::TcpListener};
use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        ServerConfig,
        pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer},
    },
};

const SECRET: &str = "cAREfCzucJ8hSECRETSECRET";

/// What the TLS server saw.
#[derive(Default)]
struct Seen {
    connections: AtomicUsize,
    handshakes_completed: AtomicUsize,
    plaintext_bytes: AtomicUsize,
    secret_seen: AtomicBool,
}

/// A TLS server on 127.0.0.1 with a self-signed certificate for `localhost`, which no client
/// should trust.
async fn untrusted_tls_server() -> (u16, Arc<Seen>) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let chain = vec![CertificateDer::from(cert.cert.der().to_vec())];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
    let config = ServerConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Seen::default());
    let record = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            record.connections.fetch_add(1, Ordering::SeqCst);
            let acceptor = acceptor.clone();
            let record = Arc::clone(&record);
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                record.handshakes_completed.fetch_add(1, Ordering::SeqCst);
                let mut buf = vec![0; 64 * 1024];
                while let Ok(n @ 1..) = tls.read(&mut buf).await {
                    record.plaintext_bytes.fetch_add(n, Ordering::SeqCst);
                    if buf[..n]
                        .windows(SECRET.len())
                        .any(|w| w == SECRET.as_bytes())
                    {
                        record.secret_seen.store(true, Ordering::SeqCst);
                    }
                }
            });
        }
    });
    (port, seen)
}

/// DESIGN.md's public contract, as written: an `https://` base URL with the built-in client.
#[test]
fn an_https_base_url_builds_with_the_built_in_client() {
    let source = BesenderTokenSource::builder("https://open.example.com")
        .client_id(19)
        .client_secret(SECRET)
        .build()
        .unwrap();
    assert_eq!(
        source.endpoint(),
        "https://open.example.com/open/api/v1/access_token"
    );
}

#[tokio::test]
async fn an_untrusted_certificate_is_refused_before_the_secret_is_sent() {
    let (port, seen) = untrusted_tls_server().await;
    let source = BesenderTokenSource::builder(format!("https://localhost:{port}"))
        .client_id(19)
        .client_secret(SECRET)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let err = source.fetch().await.unwrap_err();

    assert!(
        matches!(err.kind(), BesenderErrorKind::Transport),
        "{:?}",
        err.kind()
    );
    assert_eq!(
        err.endpoint(),
        format!("https://localhost:{port}/open/api/v1/access_token")
    );
    // The cause chain says why: the certificate.
    let mut causes = Vec::new();
    let mut cause = err.source();
    while let Some(c) = cause {
        causes.push(c.to_string());
        cause = c.source();
    }
    let causes = causes.join(" / ");
    assert!(causes.to_lowercase().contains("certificate"), "{causes}");
    let text = format!("{err} {err:?} {causes}");
    assert!(!text.contains(SECRET), "{text}");

    // A TLS handshake was attempted (not plain HTTP), never completed, and nothing was sent.
    assert!(seen.connections.load(Ordering::SeqCst) >= 1);
    assert_eq!(seen.handshakes_completed.load(Ordering::SeqCst), 0);
    assert_eq!(seen.plaintext_bytes.load(Ordering::SeqCst), 0);
    assert!(!seen.secret_seen.load(Ordering::SeqCst));
}
