//! End to end: a hyper-util client through the layer to a hyper server on 127.0.0.1, against
//! the same client through tower-http's `AddAuthorization` (static, sensitive bearer), in the
//! same run.
//!
//! Run with `cargo bench --bench e2e`. 64 requests in flight, each a POST with a 1 KiB body and a
//! 1.1 KB token (the size of Besender's example token), over HTTP/1.1 and h2c. Loopback
//! throughput drifts by tens of percent from second to second on a shared machine, so the runs
//! are short and interleaved (A B, B A, ...), the ratio is taken within each pair, and the median
//! of 60 pairs is reported with the middle half of the pair ratios. Each pair builds both clients
//! afresh, in its own order, and warms them before timing them (see `pairs_row`).
//!
//! `E2E_RETRY=0` measures the layer with `.retry(false)`, `E2E_RETRY=none` with
//! `.without_retry()` (not with `E2E_ONLY`, `E2E_AA` or `E2E_WRAP`, which measure other
//! things); `E2E_PROTO=h1` or `E2E_PROTO=h2c` runs one
//! protocol; `E2E_PAIRS` and `E2E_REQUESTS` (per run) change the sample; `E2E_ONLY=baseline` or
//! `E2E_ONLY=layer` runs one side alone, for a profiler or `strace -c` (both send the same bytes
//! and make the same syscalls per request); `E2E_DEBUG=1` prints each run's rate and new
//! connections. `E2E_AA=1` compares the baseline with an identical client (the method's own
//! bias, which should be 1.00x), `E2E_WRAP=1` with one whose body is wrapped in a `ReplayBody`.

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use besender_auth::{BesenderAuthLayer, ReplayBody, Token};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::net::TcpListener;
use tower::{Layer, Service, ServiceExt};
use tower_http::auth::AddAuthorization;

const IN_FLIGHT: usize = 64;
/// Connections the server accepted, for `E2E_DEBUG=1`.
static ACCEPTS: AtomicU64 = AtomicU64::new(0);

/// Runs are short and pairs many: drift between the two halves of a pair is what skews a ratio.
/// `E2E_REQUESTS` and `E2E_PAIRS` override these.
const REQUESTS_PER_RUN: u64 = 5_000;
const PAIRS: usize = 60;

fn setting<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Answers every request with 200 after reading its body.
async fn serve(listener: TcpListener) {
    loop {
        let (stream, _) = listener.accept().await.unwrap();
        ACCEPTS.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(|request: Request<Incoming>| async move {
                let _ = request.into_body().collect().await;
                let mut response = Response::new(Empty::<Bytes>::new());
                *response.status_mut() = StatusCode::OK;
                Ok::<_, Infallible>(response)
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// What one run measured.
#[derive(Clone, Copy)]
struct Run {
    /// Requests per second.
    rate: f64,
    /// CPU time of the whole process (client and server) per request, in nanoseconds, where
    /// the OS reports it (Linux): less disturbed than the rate by other load on the machine.
    cpu_ns: Option<f64>,
}

/// CPU time used so far by every thread of this process, in nanoseconds (Linux: the first field
/// of each thread's `schedstat`); `None` elsewhere.
fn process_cpu_ns() -> Option<u64> {
    let mut total = 0;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let stat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        total += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total)
}

/// `requests` requests, `IN_FLIGHT` at a time.
async fn throughput<S>(service: S, url: &str, body: Bytes, requests: u64) -> Run
where
    S: Service<Request<Full<Bytes>>, Response = Response<Incoming>> + Clone + Send + 'static,
    S::Error: std::fmt::Debug,
    S::Future: Send,
{
    let sent = Arc::new(AtomicU64::new(0));
    let accepts = ACCEPTS.load(Ordering::Relaxed);
    let cpu_start = process_cpu_ns();
    let start = Instant::now();
    let workers: Vec<_> = (0..IN_FLIGHT)
        .map(|_| {
            let (service, sent, body, url) = (
                service.clone(),
                Arc::clone(&sent),
                body.clone(),
                url.to_owned(),
            );
            tokio::spawn(async move {
                while sent.fetch_add(1, Ordering::Relaxed) < requests {
                    let request = Request::post(&url)
                        .header("content-type", "application/json")
                        .body(Full::new(body.clone()))
                        .unwrap();
                    let response = service.clone().oneshot(request).await.unwrap();
                    assert_eq!(response.status(), StatusCode::OK);
                    let _ = response.into_body().collect().await.unwrap();
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
    let elapsed = start.elapsed();
    let cpu = cpu_start
        .zip(process_cpu_ns())
        .map(|(a, b)| b.saturating_sub(a));
    if std::env::var_os("E2E_DEBUG").is_some() {
        let connections = ACCEPTS.load(Ordering::Relaxed) - accepts;
        let rate = requests as f64 / elapsed.as_secs_f64();
        eprintln!(
            "{}: {rate:.0} req/s, {connections} new connections",
            std::any::type_name::<S>()
        );
    }
    Run {
        rate: requests as f64 / elapsed.as_secs_f64(),
        cpu_ns: cpu.map(|ns| ns as f64 / requests as f64),
    }
}

/// Prints a table row: the median ratio of `pairs` interleaved pairs of runs, `ours` over
/// `baseline`.
///
/// Each pair builds both clients afresh (new connection pools), in alternating order, and warms
/// them before its two timed runs. Clients kept for the whole row showed a bias of their own:
/// against an identical second client (`E2E_AA=1`), the client built and warmed second measured
/// 2-4% slower, as large as the effect being judged.
async fn pairs_row<A, B>(
    label: &str,
    make_baseline: impl Fn() -> A,
    make_ours: impl Fn() -> B,
    url: &str,
    body: &Bytes,
    requests: u64,
    pairs: usize,
) where
    A: Service<Request<Full<Bytes>>, Response = Response<Incoming>> + Clone + Send + 'static,
    A::Error: std::fmt::Debug,
    A::Future: Send,
    B: Service<Request<Full<Bytes>>, Response = Response<Incoming>> + Clone + Send + 'static,
    B::Error: std::fmt::Debug,
    B::Future: Send,
{
    let (mut base_rates, mut our_rates, mut ratios) = (vec![], vec![], vec![]);
    let mut cpu_ratios = vec![];
    for pair in 0..pairs {
        let baseline_first = pair % 2 == 0;
        let (baseline, ours) = if baseline_first {
            let baseline = make_baseline();
            (baseline, make_ours())
        } else {
            let ours = make_ours();
            (make_baseline(), ours)
        };
        let run_baseline = || throughput(baseline.clone(), url, body.clone(), requests);
        let run_ours = || throughput(ours.clone(), url, body.clone(), requests);
        // Warm both pools, then time both, each in this pair's order.
        let (b, o) = if baseline_first {
            run_baseline().await;
            run_ours().await;
            let b = run_baseline().await;
            (b, run_ours().await)
        } else {
            run_ours().await;
            run_baseline().await;
            let o = run_ours().await;
            (run_baseline().await, o)
        };
        base_rates.push(b.rate);
        our_rates.push(o.rate);
        ratios.push(o.rate / b.rate);
        if let (Some(b), Some(o)) = (b.cpu_ns, o.cpu_ns) {
            // Throughput's sense: above 1 means less CPU per request than the baseline.
            cpu_ratios.push(b / o);
        }
    }
    let cpu = match cpu_ratios.is_empty() {
        true => "n/a".to_owned(),
        false => format!("{:.3}x", median(&mut cpu_ratios)),
    };
    println!(
        "| {label} | {:.0} | {:.0} | {:.3}x | {:.3}x-{:.3}x | {cpu} |",
        median(&mut base_rates),
        median(&mut our_rates),
        median(&mut ratios),
        quantile(&mut ratios, 0.25),
        quantile(&mut ratios, 0.75),
    );
}

/// A fresh client, with a pool of its own.
fn client<B>(h2: bool) -> Client<HttpConnector, B>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
{
    Client::builder(TokioExecutor::new())
        .http2_only(h2)
        .build_http()
}

fn median(values: &mut [f64]) -> f64 {
    quantile(values, 0.5)
}

fn quantile(values: &mut [f64], q: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    values[((values.len() - 1) as f64 * q).round() as usize]
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let url = format!("http://{}/api/demo", listener.local_addr().unwrap());
        tokio::spawn(serve(listener));

        let token = format!("eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.{}.sig", "x".repeat(1060));
        let body = Bytes::from(vec![b'x'; 1024]);
        let layer = BesenderAuthLayer::new(Token::bearer(&token, Duration::from_secs(86_400)));
        layer.cache().get().await.unwrap();

        let requests = setting("E2E_REQUESTS", REQUESTS_PER_RUN);
        let pairs = setting("E2E_PAIRS", PAIRS).max(1);
        println!("| protocol | AddAuthorization req/s (median) | BesenderAuth req/s (median) | throughput ratio (median of {pairs} pairs) | middle half of the pair ratios | CPU per request, baseline over ours (median) |");
        println!("|---|---|---|---|---|---|");
        // E2E_RETRY=0 measures the layer with `.retry(false)`, E2E_RETRY=none with
        // `.without_retry()`; E2E_PROTO=h1 or h2c runs one protocol.
        let retry_setting = std::env::var("E2E_RETRY");
        let retry = retry_setting.as_deref().map_or(true, |v| v != "0" && v != "none");
        let without_retry = retry_setting.as_deref() == Ok("none");
        let protocols: &[bool] = match std::env::var("E2E_PROTO").as_deref() {
            Ok("h1") => &[false],
            Ok("h2c") => &[true],
            _ => &[false, true],
        };
        for &h2 in protocols {
            let baseline = || AddAuthorization::bearer(client(h2), &token).as_sensitive(true);
            let ours = || layer.clone().retry(retry).layer(client(h2));
            if without_retry && std::env::var_os("E2E_ONLY").is_some() {
                panic!("E2E_ONLY measures `.retry(..)`: unset E2E_RETRY=none");
            }

            // E2E_ONLY=baseline or E2E_ONLY=layer: that side alone, warmed, for a profiler or
            // strace.
            match std::env::var("E2E_ONLY").as_deref() {
                Ok("baseline") => {
                    let baseline = baseline();
                    throughput(baseline.clone(), &url, body.clone(), requests).await;
                    let rate = throughput(baseline, &url, body.clone(), requests).await;
                    println!("baseline alone: {:.0} req/s", rate.rate);
                    continue;
                }
                Ok("layer") => {
                    let ours = ours();
                    throughput(ours.clone(), &url, body.clone(), requests).await;
                    let rate = throughput(ours, &url, body.clone(), requests).await;
                    println!("layer alone: {:.0} req/s", rate.rate);
                    continue;
                }
                _ => {}
            }
            let label = if h2 { "h2c" } else { "HTTP/1.1" };
            // E2E_AA=1: the baseline against a second, identical baseline client, to show the
            // bias of the method itself. E2E_WRAP=1: the baseline against itself with the
            // layer's body type (`ReplayBody`, passed through), to isolate what the body's
            // change of type costs.
            if std::env::var_os("E2E_WRAP").is_some() {
                let wrapped = || {
                    tower::ServiceBuilder::new()
                        .map_request(|r: Request<Full<Bytes>>| r.map(ReplayBody::new))
                        .service(AddAuthorization::bearer(client(h2), &token).as_sensitive(true))
                };
                pairs_row(label, baseline, wrapped, &url, &body, requests, pairs).await;
            } else if std::env::var_os("E2E_AA").is_some() {
                pairs_row(label, baseline, baseline, &url, &body, requests, pairs).await;
            } else if without_retry {
                let ours = || layer.clone().without_retry().layer(client(h2));
                pairs_row(label, baseline, ours, &url, &body, requests, pairs).await;
            } else {
                pairs_row(label, baseline, ours, &url, &body, requests, pairs).await;
            }
        }
    });
}
