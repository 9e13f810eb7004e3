use bytes::Bytes;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use http::Request;
use http_body_util::Full;
use std::{hint::black_box, time::Duration};
fn request() -> Request<Full<Bytes>> {
    Request::post("http://open.example.com/api/demo?page=1")
        .header("content-type", "application/json")
        .header("accept", "application/json")
        .header("user-agent", "bench/1.0")
        .header("x-request-id", "0123456789abcdef")
        .header("x-tenant", "19")
        .body(Full::new(Bytes::from_static(&[b'x'; 64])))
        .unwrap()
}
fn b(c: &mut Criterion) {
    let (parts, _) = request().into_parts();
    c.bench_function("parts clone+drop", |b| b.iter(|| black_box(parts.clone())));
    c.bench_function("headers clone+drop", |b| {
        b.iter(|| black_box(parts.headers.clone()))
    });
    c.bench_function("uri clone+drop", |b| {
        b.iter(|| black_box(parts.uri.clone()))
    });
    c.bench_function("ext clone+drop", |b| {
        b.iter(|| black_box(parts.extensions.clone()))
    });
    c.bench_function("box 400B", |b| b.iter(|| black_box(Box::new([0u8; 400]))));
    c.bench_function("arc mutex notify", |b| {
        b.iter(|| {
            black_box(std::sync::Arc::new((
                std::sync::Mutex::new(Some([0u64; 8])),
                tokio::sync::Notify::new(),
            )))
        })
    });
    c.bench_function("request build+drop", |b| b.iter(|| black_box(request())));
    c.bench_function("request drop", |b| {
        b.iter_batched(request, |r| drop(black_box(r)), BatchSize::SmallInput)
    });
}
criterion_group! {name=benches; config=Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2)); targets=b}
criterion_main!(benches);
