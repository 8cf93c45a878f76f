//! The `flowmeter` binary: parses the command line and hands it to the
//! library's [`flowmeter::cli`], which loads the config and runs the
//! subcommand (one module per subcommand, in `src/cli/`).

use clap::Parser;

/// mimalloc instead of glibc malloc: the hot paths allocate many small,
/// short-lived objects (JSON values, Redis replies), and profiles showed a
/// quarter of the CPU in glibc's malloc/free (see BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    flowmeter::cli::main(flowmeter::cli::Cli::parse()).await
}
