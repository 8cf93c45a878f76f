//! flowmeter: an event-sourced stream processor for traffic and bandwidth metrics.
//!
//! Collectors append raw events to Redis Streams; consumer groups read them with
//! acknowledgements; the rollup processor folds them into MySQL hourly and daily
//! tables, exactly once in effect (see `docs/guarantees.md`).
//!
//! # Layout
//!
//! | module | concept |
//! |---|---|
//! | [`config`] | the one typed, layered configuration (defaults < file < env) |
//! | [`event`] | event kinds, their JSON Schemas, validation, timestamps |
//! | [`stream`] | Redis: every key name, the producer (XADD; idempotent, behind backpressure), fenced group reads, leases |
//! | [`store`] | MySQL: pool, migrations, checkpoints, generic rollup upserts |
//! | [`processor`] | processor definitions (`processors/*.toml`), registry, and the shard core every type runs on (`processor::core`); one directory per processor type |
//! | [`sketch`] | mergeable quantile (DDSketch) and distinct-count (HyperLogLog) sketches |
//! | [`expr`] | the small filter/value expression language of processor definitions |
//! | [`groups`] | consumer-group administration: `flowmeter groups create/reset/delete` |
//! | [`retention`] | safe trimming by age and length, never past what a group still needs |
//! | [`dlq`] | dead-letter streams: entries a group could not process, and `flowmeter dlq` |
//! | [`status`] | the figures of `GET /v1/status` and `flowmeter status` |
//! | [`hub`] | the realtime WebSocket hub: sliding windows fed from the streams, `GET /v1/ws` |
//! | [`alert`] | alert rules (threshold, spike, anomaly), their state machine and the one evaluator |
//! | [`auth`] | bearer tokens (kept hashed) and scopes; the fail-closed rule for open servers; the client key of per-client limits |
//! | [`api`] | the HTTP API: ingest, rollup queries, status; its server (connection cap, timeouts, TLS) and the ingest rate limit |
//! | [`web`] | the dashboard and the browser SDK, embedded in the binary |
//! | [`app`] | wiring: builds every component from the config and runs the roles |
//! | [`telemetry`] | tracing setup and the names of every counter |
//! | [`collector`] | the in-process tower layer that records `http` events, with its batching, spilling sender |
//! | [`loadgen`] | seeded synthetic traffic for both kinds, its exact totals, and `flowmeter verify` of them against the tables |
//! | [`bench`] | `flowmeter bench`: the end-to-end benchmark |
//! | [`table`] | aligned plain-text tables for the CLI |
//! | [`human`] | numbers and times for people (rates, stream positions as times), progress bars, when to colour |
//! | [`pem`] | PEM files of the TLS settings, read and checked at start |

pub mod alert;
pub mod api;
pub mod app;
pub mod auth;
pub mod bench;
pub mod collector;
pub mod config;
pub mod dlq;
pub mod event;
pub mod expr;
pub mod groups;
pub mod hub;
pub mod human;
pub mod loadgen;
pub mod pem;
pub mod processor;
pub mod retention;
pub mod sketch;
pub mod status;
pub mod store;
pub mod stream;
pub mod table;
pub mod telemetry;
pub mod web;
