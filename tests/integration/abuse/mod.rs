//! The abuse suite: each area's attacks replayed against a real server on
//! 127.0.0.1, every loop bounded in count and time, each asserting that its
//! bound holds and that the rest of the system does not notice. One binary,
//! one module per area.

mod hub;
mod ingest;
mod ingest_bounds;
mod query;
mod rollup;
mod rollup_rows;
mod server;
