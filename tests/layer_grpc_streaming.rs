//! gRPC client streaming through the layer: a trailers-only `UNAUTHENTICATED` to the revoked
//! token, then one retry that replays the whole stream to a real tonic server on 127.0.0.1.

mod common;

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use besender_auth::{BesenderAuthLayer, ReplayBody};
use common::source::TestSource;
use tokio::{net::TcpListener, time::timeout};

const HANG: Duration = Duration::from_secs(20);

fn layer() -> (TestSource, BesenderAuthLayer) {
    let source = TestSource::new(Duration::from_secs(3600), Duration::ZERO);
    let layer = BesenderAuthLayer::new(source.source());
    (source, layer)
}

use tonic::{
    Status,
    server::NamedService,
    service::interceptor::InterceptedService,
    transport::{Endpoint, Server, server::TcpIncoming},
};
use tonic_prost::ProstCodec;

#[derive(Clone, PartialEq, prost::Message)]
pub struct Msg {
    #[prost(string, tag = "1")]
    pub text: String,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

#[derive(Clone)]
struct Concat;
impl NamedService for Concat {
    const NAME: &'static str = "test.Concat";
}

struct Handler;
impl tower::Service<tonic::Request<tonic::Streaming<Msg>>> for Handler {
    type Response = tonic::Response<Msg>;
    type Error = Status;
    type Future = BoxFuture<Result<tonic::Response<Msg>, Status>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, request: tonic::Request<tonic::Streaming<Msg>>) -> Self::Future {
        Box::pin(async move {
            let mut stream = request.into_inner();
            let mut parts = Vec::new();
            while let Some(m) = stream.message().await? {
                parts.push(m.text);
            }
            Ok(tonic::Response::new(Msg {
                text: parts.join(","),
            }))
        })
    }
}

impl tower::Service<http::Request<tonic::body::Body>> for Concat {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(ProstCodec::<Msg, Msg>::default());
            Ok(grpc.client_streaming(Handler, request).await)
        })
    }
}

#[tokio::test]
async fn grpc_client_streaming_is_retried_after_trailers_only_16() {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = InterceptedService::new(Concat, |request: tonic::Request<()>| {
        match request.metadata().get("authorization") {
            Some(v) if v == "Bearer token-1" => Err(Status::unauthenticated("revoked")),
            Some(_) => Ok(request),
            None => Err(Status::unauthenticated("none")),
        }
    });
    tokio::spawn(
        Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpIncoming::from(listener)),
    );
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let (source, layer) = layer();
    let stack = tower::ServiceBuilder::new()
        .layer(layer.clone())
        .map_request(|r: http::Request<ReplayBody<tonic::body::Body>>| {
            r.map(tonic::body::Body::new)
        })
        .service(channel);
    let mut client = tonic::client::Grpc::new(stack);
    client.ready().await.unwrap();
    let messages: Vec<Msg> = ["a", "b", "c"]
        .into_iter()
        .map(|t| Msg { text: t.into() })
        .collect();
    let stream = tonic::codegen::tokio_stream::iter(messages);
    let reply = timeout(
        HANG,
        client.client_streaming(
            tonic::Request::new(stream),
            http::uri::PathAndQuery::from_static("/test.Concat/Concat"),
            ProstCodec::<Msg, Msg>::default(),
        ),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(reply.into_inner().text, "a,b,c");
    assert_eq!(source.calls(), 2);
    assert_eq!(layer.stats().successful_retries, 1);
}
