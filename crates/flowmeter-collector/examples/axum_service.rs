//! A small axum service measured by flowmeter-collector.
//!
//! ```sh
//! flowmeter serve &                                   # ingest + rollups
//! cargo run -p flowmeter-collector --example axum_service   # this service on 127.0.0.1:3000
//! curl localhost:3000/api/courses/42; curl localhost:3000/api/videos/7/manifest
//! curl 'localhost:8080/v1/rollups/hourly?kind=http&service=courses-demo'   # a second later
//! ```
//!
//! Environment: `REDIS_URL` (default redis://127.0.0.1:6379), `FM_PREFIX`
//! (default `fm`, must match the flowmeter server's `redis.prefix`), `LISTEN`
//! (default 127.0.0.1:3000). Ctrl-C flushes the collector before exiting.

use std::time::Duration;

use axum::extract::Path;
use axum::routing::{get, post};
use axum::{Json, Router};
use flowmeter_collector::{CollectorConfig, MetricsLayer};
use serde_json::{json, Value};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut config = CollectorConfig::new("courses-demo");
    if let Ok(url) = std::env::var("REDIS_URL") {
        config.redis_url = url;
    }
    if let Ok(prefix) = std::env::var("FM_PREFIX") {
        config.prefix = prefix;
    }
    config.user_header = Some("x-user-id".into());
    config.spill_dir = Some(std::env::temp_dir().join("flowmeter-spill"));
    // One line: every route below is measured.
    let metrics = MetricsLayer::new(config)?;

    let app = Router::new()
        .route("/api/courses/{id}", get(course))
        .route("/api/videos/{id}/manifest", get(manifest))
        .route("/api/progress", post(progress))
        .layer(metrics.clone());

    let listen = std::env::var("LISTEN").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("listening on http://{listen}");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    metrics.collector().shutdown().await;
    println!("collector: {:?}", metrics.collector().stats());
    Ok(())
}

async fn course(Path(id): Path<u64>) -> Json<Value> {
    Json(json!({"id": id, "title": format!("Course {id}"), "lessons": 12}))
}

async fn manifest(Path(id): Path<u64>) -> String {
    tokio::time::sleep(Duration::from_millis(3)).await;
    format!("#EXTM3U\n#EXT-X-VERSION:3\n# video {id}\n")
}

async fn progress(Json(body): Json<Value>) -> Json<Value> {
    Json(json!({"saved": body}))
}
