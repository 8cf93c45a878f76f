//! The abuse suite: each area drives its limits past their edges against a
//! real server on 127.0.0.1 and checks that the rest of the system does not
//! notice. Every loop is bounded in count and time.

#[path = "../common/mod.rs"]
mod common;

mod server;
