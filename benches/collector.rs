//! What the collector layer adds to a request, in process and without a
//! network: the same axum router with and without `MetricsLayer`, driven
//! with `tower::ServiceExt::oneshot`, the response body read to the end.
//!
//! The layer's collector sends to the real Redis on 127.0.0.1:6379 (prefix
//! `fmbench_collector`, deleted between samples, outside the timing). Two
//! "with" figures:
//! - `with_layer_request_path`: the sender runs on another thread; this is
//!   the time a request spends in the layer;
//! - `with_layer_total`: the sender runs on the same single-threaded runtime
//!   (which yields to it every 64 requests) and the timing lasts until it has
//!   taken every event: the collector's whole CPU cost per request.
//!
//! Also prints heap allocations per request with and without the layer.
//!
//! `collector_send/{plain,exact}` time the requests *and* their sending,
//! until Redis has acknowledged every event (sender on the same thread):
//! `plain` with `idempotency_window` zero (one MULTI/EXEC per batch, a
//! retried batch may be stored twice), `exact` with the default (every
//! batch under its id, one idempotent script per batch and its record);
//! `…_batches_of_1` send every event as its own batch (one round trip
//! each: the per-batch cost).
//!
//! Run with `cargo bench --bench collector`; results are in BENCHMARKS.md.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use criterion::{criterion_group, criterion_main, Criterion};
use flowmeter_collector::{CollectorConfig, MetricsLayer};
use http_body_util::BodyExt;
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use tower::ServiceExt;

#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

const PREFIX: &str = "fmbench_collector";

fn router() -> Router {
    Router::new()
        .route(
            "/api/courses/{id}",
            get(|| async { r#"{"id":42,"title":"Course"}"# }),
        )
        .route("/healthz", get(|| async { "ok" }))
}

async fn one(app: &Router) {
    let req = http::Request::get("/api/courses/42")
        .header("user-agent", "bench")
        .body(Body::empty())
        .expect("request");
    let resp = app.clone().oneshot(req).await.expect("infallible");
    let body = resp.into_body().collect().await.expect("body");
    std::hint::black_box(body);
}

async fn wipe() {
    if let Ok(c) = redis::Client::open("redis://127.0.0.1:6379") {
        if let Ok(mut r) = c.get_multiplexed_async_connection().await {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{PREFIX}:*"))
                .query_async(&mut r)
                .await
                .unwrap_or_default();
            if !keys.is_empty() {
                let _: Result<(), _> = redis::cmd("DEL").arg(keys).query_async(&mut r).await;
            }
        }
    }
}

fn config() -> CollectorConfig {
    let mut cfg = CollectorConfig::new("bench");
    cfg.prefix = PREFIX.into();
    // A criterion sample can record ~100k requests faster than any sender
    // drains them; a deep queue keeps the bench from measuring the drop path.
    cfg.queue_capacity = 4_000_000;
    cfg.memory_max_events = 4_000_000;
    cfg
}

fn overhead(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // A second runtime, on its own thread, for the "request path" variant's sender.
    let sender_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let plain = router();
    let same = rt.block_on(async { MetricsLayer::new(config()).expect("collector") });
    let apart = {
        let _guard = sender_rt.enter();
        MetricsLayer::new(config()).expect("collector")
    };
    let same_app = router().layer(same.clone());
    let apart_app = router().layer(apart.clone());

    // Allocations per request on the request path, over 10,000 requests.
    let count = |app: &Router| {
        rt.block_on(async {
            one(app).await; // warm
            let region = Region::new(GLOBAL);
            for _ in 0..10_000 {
                one(app).await;
            }
            region.change().allocations as f64 / 10_000.0
        })
    };
    let without = count(&plain);
    let with = count(&apart_app);
    println!(
        "allocations per request: without layer {without:.1}, with layer {with:.1} (+{:.1}) on the request path",
        with - without
    );

    let mut g = c.benchmark_group("collector");
    g.bench_function("without_layer", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for i in 0..iters {
                    one(&plain).await;
                    if i % 64 == 63 {
                        tokio::task::yield_now().await;
                    }
                }
                start.elapsed()
            })
        })
    });
    // The time a request spends in the layer; the sender works on another core.
    g.bench_function("with_layer_request_path", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for i in 0..iters {
                    one(&apart_app).await;
                    if i % 64 == 63 {
                        tokio::task::yield_now().await;
                    }
                }
                let t = start.elapsed();
                apart.collector().settle(Duration::from_secs(30)).await;
                t
            })
        })
    });
    // All the collector's CPU on one thread: the layer, and the sender
    // serializing and XADDing every event (timed until it has taken them all).
    g.bench_function("with_layer_total", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for i in 0..iters {
                    one(&same_app).await;
                    if i % 64 == 63 {
                        tokio::task::yield_now().await;
                    }
                }
                same.collector().settle(Duration::from_secs(30)).await;
                let t = start.elapsed();
                wipe().await;
                t
            })
        })
    });
    g.finish();
    // (a current-thread runtime's I/O is driven only by its own block_on)
    rt.block_on(same.collector().shutdown());
    sender_rt.block_on(apart.collector().shutdown());
    for m in [&same, &apart] {
        let s = m.collector().stats();
        println!(
            "collector: {} recorded, {} sent, {} dropped",
            s.recorded,
            s.sent,
            s.dropped_queue_full + s.dropped_disk_full + s.dropped_invalid
        );
        assert_eq!(s.recorded, s.sent, "the bench lost events: {s:?}");
    }
    rt.block_on(wipe());
}

/// Requests and their sending until Redis acknowledged them: plain
/// MULTI/EXEC against the idempotent path (see the module doc).
fn send_cost(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut g = c.benchmark_group("collector_send");
    let exact = CollectorConfig::new("bench").idempotency_window;
    // (name, window, events per batch: the default's, or one, the
    // per-batch cost of a service too quiet to fill batches)
    for (name, window, batch) in [
        ("plain", Duration::ZERO, None),
        ("exact", exact, None),
        ("plain_batches_of_1", Duration::ZERO, Some(1)),
        ("exact_batches_of_1", exact, Some(1)),
    ] {
        let mut cfg = config();
        cfg.idempotency_window = window;
        if let Some(n) = batch {
            (cfg.batch_size, cfg.max_pipeline) = (n, n);
        }
        let m = rt.block_on(async { MetricsLayer::new(cfg).expect("collector") });
        let app = router().layer(m.clone());
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let target = m.collector().stats().recorded + iters;
                    let start = Instant::now();
                    for i in 0..iters {
                        one(&app).await;
                        if i % 64 == 63 {
                            tokio::task::yield_now().await;
                        }
                    }
                    while m.collector().stats().sent < target {
                        tokio::task::yield_now().await;
                    }
                    let t = start.elapsed();
                    wipe().await;
                    t
                })
            })
        });
        rt.block_on(m.collector().shutdown());
        let s = m.collector().stats();
        assert_eq!(s.recorded, s.sent, "the bench lost events: {s:?}");
    }
    g.finish();
    rt.block_on(wipe());
}

criterion_group!(benches, overhead, send_cost);
criterion_main!(benches);
