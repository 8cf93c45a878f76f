//! The abuse suite: each module drives one area's bounds past their edges
//! against real servers on 127.0.0.1 and checks that the rest of the system
//! does not notice. Every loop is bounded in count and time.

#[path = "../common/mod.rs"]
mod common;

mod ingest;
