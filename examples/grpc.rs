//! The layer in a tonic client, against a real tonic server on 127.0.0.1.
//!
//! Run with `cargo run --example grpc`. It starts `FakeBesender` (the token endpoint) and a tonic
//! server whose interceptor accepts only tokens the platform has issued and not revoked. A
//! `tonic::transport::Channel` goes through `BesenderAuthLayer`; the example then shows a call
//! succeeding, a revoked token answered with `UNAUTHENTICATED` and retried transparently with a
//! fresh token, and `PERMISSION_DENIED` returned as is. No protoc: the messages and the routing
//! are written by hand, as generated code would have them. It never prints a token.

use std::{
    convert::Infallible,
    future::{Future, Ready, ready},
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
};

use besender_auth::{BesenderAuthLayer, BesenderTokenSource, ReplayBody, testing::FakeBesender};
use http::uri::PathAndQuery;
use tokio::net::TcpListener;
use tonic::{
    Request, Response, Status,
    body::Body,
    server::{NamedService, UnaryService},
    service::interceptor::InterceptedService,
    transport::{Endpoint, Server, server::TcpIncoming},
};
use tonic_prost::ProstCodec;
use tower::{Service, ServiceBuilder};

// package demo; service Accounts { rpc GetBalance(BalanceRequest) returns (BalanceReply); }
#[derive(Clone, PartialEq, prost::Message)]
struct BalanceRequest {
    #[prost(string, tag = "1")]
    account: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct BalanceReply {
    #[prost(string, tag = "1")]
    balance: String,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

const GET_BALANCE: &str = "/demo.Accounts/GetBalance";

/// The server: routes `GetBalance` to its handler, as tonic's generated server would.
#[derive(Clone)]
struct Accounts;

impl NamedService for Accounts {
    const NAME: &'static str = "demo.Accounts";
}

impl Service<http::Request<Body>> for Accounts {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        Box::pin(async move {
            if request.uri().path() != GET_BALANCE {
                return Ok(Status::unimplemented("no such method").into_http());
            }
            let mut grpc = tonic::server::Grpc::new(ProstCodec::default());
            Ok(grpc.unary(GetBalance, request).await)
        })
    }
}

/// The handler. The token was checked by the interceptor (authentication); which accounts this
/// client may read is the handler's business (authorization), and no new token changes that.
struct GetBalance;

impl UnaryService<BalanceRequest> for GetBalance {
    type Response = BalanceReply;
    type Future = Ready<Result<Response<BalanceReply>, Status>>;

    fn call(&mut self, request: Request<BalanceRequest>) -> Self::Future {
        let account = request.into_inner().account;
        ready(match account.as_str() {
            "acme" => Ok(Response::new(BalanceReply {
                balance: "1,250.00 EUR".into(),
            })),
            _ => {
                println!(
                    "   server: token fine, account {account} not allowed -> PERMISSION_DENIED"
                );
                Err(Status::permission_denied(format!("no access to {account}")))
            }
        })
    }
}

/// Starts the tonic server; every request passes `check_token` first, which counts it.
async fn start_server(fake: Arc<FakeBesender>, calls: Arc<AtomicU64>) -> std::io::Result<String> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let url = format!("http://{}", listener.local_addr()?);
    let check_token = move |request: Request<()>| {
        calls.fetch_add(1, Ordering::SeqCst);
        let token = request
            .metadata()
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .ok_or_else(|| Status::unauthenticated("no bearer token"))?;
        // Ask the platform whether it still honours this token.
        if !fake.accepts_access_token(token) {
            // An interceptor's error is a trailers-only answer: grpc-status 16 in the headers,
            // which is what the layer recognizes as a refusal of the token.
            println!("   server: token not accepted -> UNAUTHENTICATED");
            return Err(Status::unauthenticated("token revoked or unknown"));
        }
        Ok(request)
    };
    let service = InterceptedService::new(Accounts, check_token);
    tokio::spawn(
        Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpIncoming::from(listener)),
    );
    Ok(url)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let fake = Arc::new(FakeBesender::start().await?);
    let calls = Arc::new(AtomicU64::new(0));
    let url = start_server(Arc::clone(&fake), Arc::clone(&calls)).await?;
    println!("Besender token endpoint: {}", fake.base_url());
    println!("gRPC server:             {url}");

    let source = BesenderTokenSource::builder(fake.base_url())
        .client_id(fake.client_id())
        .client_secret(fake.client_secret())
        .build()?;
    let layer = BesenderAuthLayer::new(source);

    // `Channel` takes tonic's own body type, and the layer hands its inner service a
    // `ReplayBody` (so that a refused call can be sent again): convert under the layer.
    let channel = Endpoint::from_shared(url)?.connect().await?;
    let stack = ServiceBuilder::new()
        .layer(layer.clone())
        .map_request(|request: http::Request<ReplayBody<Body>>| request.map(Body::new))
        .service(channel);
    let mut grpc = tonic::client::Grpc::new(stack); // or a generated `AccountsClient::new(stack)`

    let mut get_balance = async |account: &str| -> Result<String, Status> {
        // A tonic client must be ready before each call; this is where the layer waits for a
        // token (the first call fetches one).
        grpc.ready()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let request = Request::new(BalanceRequest {
            account: account.into(),
        });
        let path = PathAndQuery::from_static(GET_BALANCE);
        let codec = ProstCodec::<BalanceRequest, BalanceReply>::default();
        let response = grpc.unary(request, path, codec).await?;
        Ok(response.into_inner().balance)
    };
    let report = |what: &str, result: Result<String, Status>| {
        let outcome = match result {
            Ok(balance) => format!("OK, balance {balance}"),
            Err(status) => format!("{:?}: {}", status.code(), status.message()),
        };
        let stats = layer.stats();
        println!("client: {what} -> {outcome}");
        println!(
            "   token fetches: {}, calls the server saw: {}, refusals: {}, retries: {}",
            fake.token_calls(),
            calls.load(Ordering::SeqCst),
            stats.refusals,
            stats.retries,
        );
    };

    report("GetBalance(acme)", get_balance("acme").await);

    // The platform revokes every token. The server answers the next call UNAUTHENTICATED; the
    // layer evicts the token, fetches a fresh one and sends the call again, once. The caller
    // only sees the successful answer.
    fake.revoke_all();
    println!("-- the platform revoked every token --");
    report("GetBalance(acme), token revoked", get_balance("acme").await);

    // PERMISSION_DENIED is not a token problem: returned as is, with no refresh and no retry.
    report("GetBalance(globex)", get_balance("globex").await);

    println!("layer: {:?}", layer.stats());
    println!("cache: {:?}", layer.cache().stats());
    Ok(())
}
