//! `flowmeter loadgen`, `verify` and `bench`: the load generator and the
//! benchmarks live in the `flowmeter-bench` crate, which the server does
//! not depend on. These subcommands run its binary, the sibling of this
//! one, with this process's argv (so `flowmeter loadgen --help` is its
//! help, and `--config`/`--profile` mean the same there).

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

/// The binary that runs `loadgen`, `verify` and `bench`.
pub const BENCH_BINARY: &str = "flowmeter-bench";

/// Whatever follows the subcommand, parsed by `flowmeter-bench`, not here:
/// no help flag of its own, hyphens allowed.
#[derive(Args)]
#[command(disable_help_flag = true)]
pub struct Forward {
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "ARGS"
    )]
    args: Vec<OsString>,
}

/// The binary `name` in the directory of the running one.
pub fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("finding this binary")?;
    Ok(exe.with_file_name(format!("{name}{}", std::env::consts::EXE_SUFFIX)))
}

/// Runs `flowmeter-bench` with this process's arguments, stdio inherited,
/// and ends with its exit status. On Unix it replaces this process, so
/// Ctrl-C and SIGTERM reach the load generator alone; elsewhere this one
/// waits for it. `sub` names the subcommand in the error about a missing
/// binary.
pub fn run(sub: &str) -> anyhow::Result<ExitCode> {
    let exe = sibling(BENCH_BINARY)?;
    if !exe.is_file() {
        anyhow::bail!(
            "`flowmeter {sub}` runs {}, which is missing: build it with \
             `cargo build --release -p flowmeter-bench` (make build does)",
            exe.display()
        );
    }
    let mut argv = std::env::args_os();
    let arg0 = argv.next();
    let mut command = std::process::Command::new(&exe);
    command.args(argv);
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        // this argv[0] too, so its usage lines say `flowmeter loadgen`,
        // as typed
        if let Some(arg0) = arg0 {
            command.arg0(arg0);
        }
        // returns only when it could not replace this process
        let err = command.exec();
        Err(err).with_context(|| format!("running {}", exe.display()))
    }
    #[cfg(not(unix))]
    {
        let _ = arg0;
        let status = command
            .status()
            .with_context(|| format!("running {}", exe.display()))?;
        Ok(status
            .code()
            .and_then(|c| u8::try_from(c).ok())
            .map_or(ExitCode::FAILURE, ExitCode::from))
    }
}
