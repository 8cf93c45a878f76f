//! The `flowmeter-bench` binary: parses the command line and hands it to
//! the library's [`flowmeter_bench::cli`]. `flowmeter loadgen|verify|bench`
//! run this binary with their argv, so the commands are the same under
//! either name.

use clap::Parser;

/// mimalloc, as the `flowmeter` binary uses: the load generator allocates
/// many small, short-lived JSON values, and the bench should measure the
/// server, not glibc's malloc on this side.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    flowmeter_bench::cli::main(flowmeter_bench::cli::Cli::parse()).await
}
