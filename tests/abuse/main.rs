//! The abuse suite: each module replays what a careless client or an
//! attacker does against a real server on 127.0.0.1 (Redis and MariaDB as
//! `tests/common` sets them up) and asserts the bounds hold and the rest of
//! the system does not notice. Every loop is bounded in count and time.

#[path = "../common/mod.rs"]
mod common;

mod rollup;
