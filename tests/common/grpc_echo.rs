//! A tonic `test.Echo/Echo` service with hand-written prost messages (no protoc), for the gRPC
//! tests: routed by hand as generated code would be.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use http::uri::PathAndQuery;
use tokio::net::TcpListener;
use tonic::{
    Status,
    server::{NamedService, UnaryService},
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Server, server::TcpIncoming},
};
use tonic_prost::ProstCodec;
use tower::Service;

#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoRequest {
    #[prost(string, tag = "1")]
    pub message: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoReply {
    #[prost(string, tag = "1")]
    pub message: String,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// `test.Echo/Echo`, routed by hand as generated code would.
#[derive(Clone)]
pub struct EchoServer;

impl NamedService for EchoServer {
    const NAME: &'static str = "test.Echo";
}

struct Echo;

impl UnaryService<EchoRequest> for Echo {
    type Response = EchoReply;
    type Future = BoxFuture<Result<tonic::Response<EchoReply>, Status>>;

    fn call(&mut self, request: tonic::Request<EchoRequest>) -> Self::Future {
        let message = request.into_inner().message;
        Box::pin(async move { Ok(tonic::Response::new(EchoReply { message })) })
    }
}

impl Service<http::Request<tonic::body::Body>> for EchoServer {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(async move {
            if request.uri().path() != "/test.Echo/Echo" {
                return Ok(Status::unimplemented("no such method").into_http());
            }
            let mut grpc = tonic::server::Grpc::new(ProstCodec::default());
            Ok(grpc.unary(Echo, request).await)
        })
    }
}

/// Calls `test.Echo/Echo` with "hello" (marked `x-deny` if `deny`), after `ready`.
pub async fn echo<T>(client: &mut tonic::client::Grpc<T>, deny: bool) -> Result<String, Status>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<besender_auth::BoxError>,
    T::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<besender_auth::BoxError> + Send,
{
    client
        .ready()
        .await
        .map_err(|e| Status::unavailable(format!("not ready: {}", e.into())))?;
    let mut request = tonic::Request::new(EchoRequest {
        message: "hello".into(),
    });
    if deny {
        request
            .metadata_mut()
            .insert("x-deny", "1".parse().unwrap());
    }
    let reply = client
        .unary(
            request,
            PathAndQuery::from_static("/test.Echo/Echo"),
            ProstCodec::<EchoRequest, EchoReply>::default(),
        )
        .await?;
    Ok(reply.into_inner().message)
}

/// Serves `EchoServer` behind `check` (the server's interceptor) on 127.0.0.1; its URL.
pub async fn start_echo_server<I>(check: I) -> String
where
    I: Interceptor + Clone + Send + Sync + 'static,
{
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        Server::builder()
            .add_service(InterceptedService::new(EchoServer, check))
            .serve_with_incoming(TcpIncoming::from(listener)),
    );
    format!("http://{addr}")
}
