//! flowmeter-bench: the load generator and the benchmarks of the flowmeter
//! server, in a crate the server does not depend on.
//!
//! # Layout
//!
//! | module | concept |
//! |---|---|
//! | [`loadgen`] | seeded synthetic traffic for both kinds ([`loadgen::Generator`]), sent at a steady rate to the ingest API or straight into the streams ([`loadgen::run`]), its exact totals ([`loadgen::TruthTable`]), and [`loadgen::verify`] of them against the hourly tables |
//! | [`bench`](mod@bench) | the end-to-end benchmark (a child `flowmeter serve` per role, MySQL checked against what was sent) and the WebSocket hub benchmark ([`bench::ws`]); they return reports, the CLI prints them |
//! | [`cli`] | the `flowmeter-bench` command line (`loadgen`, `verify`, `bench`) with its rendering; `main.rs` only calls it. It takes `flowmeter`'s global options and uses its tables, human formatting and signal handling |
//!
//! The `flowmeter` binary runs this crate's binary for `flowmeter loadgen`,
//! `verify` and `bench` (it must sit in the same directory), and the
//! bench starts the `flowmeter` binary next to it for its `serve`
//! processes. The library needs neither: the generator can drive any
//! code that takes JSON events.
//!
//! ```
//! use flowmeter_bench::loadgen::{GenConfig, Generator, KindMix};
//!
//! // the same seed gives the same events
//! let mut generator = Generator::new(GenConfig {
//!     kind: KindMix::Http,
//!     seed: 7,
//!     ..GenConfig::default()
//! });
//! let now_ms = 1_772_359_200_000;
//! let event = generator.next_event(now_ms);
//! assert_eq!(event["kind"], "http");
//! ```

pub mod bench;
pub mod cli;
pub mod loadgen;
