//! Every integration test of flowmeter, in one binary (one build, one link,
//! `common` compiled once), one module per area, against the real servers
//! on 127.0.0.1 (`scripts/services start`; ClickHouse and Kafka as private
//! instances, tests/integration/common/servers.rs). Each test makes its own
//! [`common::TestEnv`]: its own Redis key prefix and MariaDB database,
//! removed when the env is dropped, also when the test fails, so tests run
//! in parallel. Tests whose figures a busy machine would distort take
//! [`common::heavy`] first and run one at a time.
//!
//! `cargo test --test integration <module>::` runs one area, e.g.
//! `cargo test --test integration exactly_once::`.

mod common;

mod abuse;
mod access;
mod alert_delivery;
mod alerts;
mod archive;
mod bench_cli;
mod cluster;
mod collector;
mod dashboard;
mod dlq;
mod exactly_once;
mod first_run;
mod golden;
mod groups;
mod health;
mod hub;
mod ingest;
mod kafka_bridge;
mod loadgen;
mod metrics;
mod new_kind;
mod outage;
mod processors;
mod prometheus;
mod readme;
mod replay;
mod retention;
mod router;
mod servers_smoke;
mod shards;
mod status;
mod tls_stores;
mod verify;
mod webrtc_sdk;
mod workspace_deps;
