//! The `rollq` binary: parse the command line, start telemetry, dispatch to a subcommand.
#![forbid(unsafe_code)]

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = rollq::cli::Cli::parse();
    rollq::cli::run(cli)
}
