//! flowmeter: an event-sourced stream processor for traffic and bandwidth metrics.
//!
//! Collectors append raw events to Redis Streams; consumer groups read them with
//! acknowledgements; the rollup processor folds them into MySQL hourly and daily
//! tables, exactly once in effect (see `docs/guarantees.md`).
//!
//! # Layout
//!
//! The workspace: this crate (the server and the CLI), `flowmeter-core`
//! (the wire: events, stream keys and shards, the Redis connection, the
//! producer), `flowmeter-collector` (the tower layer services embed) and
//! `flowmeter-bench` (the load generator and the benchmarks, with the
//! binary that `flowmeter loadgen|verify|bench` run; this crate does not
//! depend on it). The wire modules are re-exported below, so
//! `flowmeter::event`, `flowmeter::stream` and `flowmeter::collector` are
//! the paths to use.
//!
//! | module | concept |
//! |---|---|
//! | [`config`] | the one typed, layered configuration (defaults < file < env) |
//! | [`event`] | event kinds, their JSON Schemas, validation, timestamps (the valid event and timestamps: `flowmeter_core::event`) |
//! | [`stream`] | Redis: every key name, the producer (XADD; idempotent, behind backpressure), fenced group reads, leases (keys, connection and producer: `flowmeter_core::stream`) |
//! | [`store`] | MySQL: pool, migrations, checkpoints, generic rollup upserts, alerts and their notification outbox |
//! | [`processor`] | processor definitions (`processors/*.toml`), registry, and the shard core every type runs on (`processor::core`); one directory per processor type |
//! | [`sketch`] | mergeable quantile (DDSketch) and distinct-count (HyperLogLog) sketches |
//! | [`expr`] | the small filter/value expression language of processor definitions |
//! | [`groups`] | consumer-group administration: `flowmeter groups create/reset/delete` |
//! | [`shards`] | changing the shard count live: shard sets added, sealed, drained, retired (`flowmeter shards`) |
//! | [`retention`] | safe trimming by age and length, never past what a group still needs |
//! | [`dlq`] | dead-letter streams: entries a group could not process, and `flowmeter dlq` |
//! | [`status`] | the figures of `GET /v1/status` and `flowmeter status` |
//! | [`view`] | realtime views declared in `processors/*_view.toml`: channels, points, summaries, top and member lists, and the measures alert rules name |
//! | [`hub`] | the realtime WebSocket hub: sliding windows per view subject fed from the streams, `GET /v1/ws` (with its own state, which the api builds) |
//! | [`alert`] | alert rules (threshold, spike, anomaly; loaded from the `type = "alerts"` files of processors/), their state machine and the one evaluator, and the notifiers (webhook, Slack, Alertmanager) fed by the MySQL outbox |
//! | [`auth`] | bearer tokens (kept hashed) and scopes; the fail-closed rule for open servers; the client key of per-client limits |
//! | [`api`] | the HTTP API: ingest, rollup queries, status, health and readiness; its server (connection cap, timeouts, TLS) and the ingest rate limit |
//! | [`web`] | the dashboard and the browser SDK, embedded in the binary |
//! | [`app`] | wiring: builds every component from the config and runs the roles |
//! | [`telemetry`] | tracing setup, every metric named once (counters, labelled families, process and worker gauges) and the registry `/metrics` writes as Prometheus text or OpenMetrics |
//! | [`collector`] | the in-process tower layer that records `http` events, with its batching, spilling sender (the `flowmeter-collector` crate) |
//! | [`cli`] | the command line: the parser, one module per subcommand with its rendering (tables, progress bars, human text), and the forwarding of `loadgen`, `verify` and `bench` to the `flowmeter-bench` binary; `main.rs` only calls it. Nothing else imports it |
//! | [`pem`] | PEM files of the TLS settings, read and checked at start (`flowmeter_core::pem`) |

pub mod alert;
pub mod api;
pub mod app;
pub mod auth;
pub mod cli;
pub mod config;
pub mod dlq;
pub mod event;
pub mod expr;
pub mod groups;
pub mod hub;
pub mod processor;
pub mod retention;
pub mod shards;
pub mod sketch;
pub mod status;
pub mod store;
pub mod stream;
pub mod telemetry;
pub mod view;
pub mod web;

pub use flowmeter_collector as collector;
pub use flowmeter_core::pem;

#[cfg(test)]
mod layering;
