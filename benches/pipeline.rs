//! CPU cost of the two hot paths, per batch of 1000 events:
//!
//! - `ingest/parse_validate`: split an NDJSON body and validate every event
//!   against its JSON Schema (what `POST /v1/events` does before its one
//!   pipelined round trip to Redis);
//! - `rollup/decode_aggregate`: decode stream entries and fold them into the
//!   `http_hourly` and `http_daily` rows (what a rollup runner does before its
//!   one transaction per flush).
//!
//! The rollup bench compiles the shipped `processors/http_rollup.toml` against
//! the real tables, so it needs MariaDB on 127.0.0.1:3306 (`scripts/services
//! start`); it creates and drops its own database. Run with
//! `cargo bench --bench pipeline`; results are in BENCHMARKS.md.

use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use flowmeter::config::Settings;
use flowmeter::event::decode_entry as decode;
use flowmeter::event::SchemaRegistry;
use flowmeter::processor::rollup::{fold_event, CompiledTable, RollupDef, TableRows};
use flowmeter::processor::ProcessorRegistry;
use flowmeter::store::Store;

const BATCH: usize = 1000;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Realistic http events: 3 services × 40 endpoints, spread over two hours.
fn events() -> Vec<String> {
    (0..BATCH as u64)
        .map(|i| {
            serde_json::json!({
                "kind": "http",
                "ts": 1_772_359_200_000i64 + (i as i64 * 7_919) % 7_200_000,
                "service": format!("svc{}", i % 3),
                "endpoint": format!("/api/r{}/:id", i % 40),
                "method": if i % 4 == 0 { "POST" } else { "GET" },
                "status": if i % 17 == 0 { 503 } else { 200 },
                "req_bytes": 200 + i % 300,
                "resp_bytes": 1_000 + (i * 37) % 50_000,
                "duration_ms": 0.5 + (i % 400) as f64 * 0.25,
                "user_id": format!("u{}", i % 500),
            })
            .to_string()
        })
        .collect()
}

fn ingest(c: &mut Criterion) {
    let schemas = SchemaRegistry::load(&repo().join("schemas")).expect("schemas");
    let body = events().join("\n").into_bytes();
    let mut g = c.benchmark_group("ingest");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("parse_validate", |b| {
        b.iter(|| {
            let values = flowmeter::api::parse_body(&body, true, 100_000, &Default::default())
                .expect("parse");
            let mut ok = 0usize;
            for (i, v) in values.iter().enumerate() {
                ok += usize::from(schemas.validate(i, v).is_ok());
            }
            assert_eq!(ok, BATCH);
        })
    });
    g.finish();
}

/// The http rollup's tables compiled against a scratch database.
fn compiled_http_tables() -> Vec<CompiledTable> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut s = Settings::default();
        let db = format!("fmbench_{:06x}", rand::random::<u32>() & 0xff_ffff);
        s.mysql.url = format!("mysql://root@127.0.0.1:3306/{db}");
        let store = Store::connect(&s.mysql.url, 2)
            .await
            .expect("MariaDB on 127.0.0.1:3306 (run scripts/services start)");
        store
            .migrate(&repo().join("migrations"))
            .await
            .expect("migrate");
        let schemas = SchemaRegistry::load(&repo().join("schemas")).expect("schemas");
        let reg = ProcessorRegistry::load(&repo().join("processors"), &schemas).expect("defs");
        let Some(def) = reg.get("http_rollup").and_then(|p| p.get::<RollupDef>()) else {
            panic!("processors/http_rollup.toml is missing");
        };
        let mut out = Vec::new();
        for t in &def.tables {
            let cols = store.columns(&t.name).await.expect("columns");
            out.push(CompiledTable::compile(t, &cols).expect("compile"));
        }
        store.drop_database().await.expect("drop scratch database");
        out
    })
}

fn rollup(c: &mut Criterion) {
    let tables = compiled_http_tables();
    let entries = events();
    let mut g = c.benchmark_group("rollup");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("decode_aggregate", |b| {
        b.iter_batched(
            || vec![TableRows::new(); tables.len()],
            |mut aggs| {
                for e in &entries {
                    let (ev, ts) = decode(Some(e)).expect("decode");
                    fold_event(&tables, &mut aggs, &ev, ts).expect("fits");
                }
                aggs
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, ingest, rollup);
criterion_main!(benches);
