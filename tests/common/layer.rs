//! Helpers for the layer's tests over a hyper-util client.

use std::time::Duration;

use besender_auth::{BesenderAuth, BesenderAuthLayer, Error, ReplayBody};
use bytes::Bytes;
use http::{Request, Response, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use tokio::time::timeout;
use tower::ServiceExt;

use super::{AuthServer, TestBody, hyper_client, source::TestSource};

pub type Stack = BesenderAuth<Client<HttpConnector, ReplayBody<TestBody>>>;

/// Generous bound against hangs; never a timing assertion.
pub const HANG: Duration = Duration::from_secs(20);

pub fn post(url: &str, body: TestBody) -> Request<TestBody> {
    Request::post(url)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body)
        .unwrap()
}

pub async fn send(
    service: &Stack,
    request: Request<TestBody>,
) -> Result<Response<Incoming>, Error> {
    timeout(HANG, service.clone().oneshot(request))
        .await
        .expect("the request hung")
}

pub async fn body_of(response: Response<Incoming>) -> Bytes {
    response.into_body().collect().await.unwrap().to_bytes()
}

/// Builds the service a layer makes, for tests that need the concrete type.
pub trait LayerService {
    fn layer_service(&self, client: Client<HttpConnector, ReplayBody<TestBody>>) -> Stack;
}

impl LayerService for BesenderAuthLayer {
    fn layer_service(&self, client: Client<HttpConnector, ReplayBody<TestBody>>) -> Stack {
        tower::Layer::layer(self, client)
    }
}

/// An API that refuses the first token (`token-1`), and a layer whose source issues
/// `token-1`, `token-2`, ...
pub async fn refusing_first_token(h2: bool) -> (AuthServer, TestSource, BesenderAuthLayer, Stack) {
    let server = AuthServer::start().await;
    server.refuse("token-1");
    let source = TestSource::new(Duration::from_secs(3600), Duration::ZERO);
    let layer = BesenderAuthLayer::new(source.source());
    let service = layer.layer_service(hyper_client(h2));
    (server, source, layer, service)
}
