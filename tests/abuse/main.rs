//! The abuse suite: each area drives flowmeter past its configured bounds
//! against the real servers on 127.0.0.1 and checks that the bound holds
//! and the rest of the system does not notice. One binary, one module per
//! area; every loop is bounded in count and time.

#[path = "../common/mod.rs"]
mod common;

mod query;
