//! The command line: one module per subcommand, each with its clap `Args` and a `run`.
//!
//! `main.rs` parses [`Cli`] and calls [`run`]; errors are printed once, as one clear line
//! with its causes, and turn into a non-zero exit code.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::telemetry::{self, LogArgs};

pub mod aggregate;
pub mod blob_tools;
mod common;
pub mod queue_tools;
pub mod submit;
pub mod worker;

/// rollq: CSV time-series roll-ups, locally or as a queue worker on Azure Storage.
#[derive(Debug, Parser)]
#[command(name = "rollq", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub log: LogArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Roll up one CSV file (or stdin) into per-bucket statistics.
    Aggregate(aggregate::AggregateArgs),
    /// Upload CSV files to a container and enqueue one message per blob.
    Submit(submit::SubmitArgs),
    /// Run the queue worker: lease messages, roll up the blobs they name, write the outputs.
    Worker(Box<worker::WorkerArgs>),
    /// Enqueue every input blob in a container that has no current output.
    Backfill(queue_tools::BackfillArgs),
    /// Send messages to a queue, create it, or inspect it.
    Queue(queue_tools::QueueArgs),
    /// List and download blobs, or create a container.
    Blob(blob_tools::BlobArgs),
    /// Inspect or requeue the poison queue `<queue>-poison`.
    Poison(queue_tools::PoisonArgs),
}

/// Runs the parsed command line; prints a failure as one line plus its causes.
pub fn run(cli: Cli) -> ExitCode {
    if let Err(e) = telemetry::init(&cli.log) {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    let result = match cli.command {
        Command::Aggregate(args) => aggregate::run(args),
        Command::Submit(args) => submit::run(args),
        Command::Worker(args) => worker::run(*args),
        Command::Backfill(args) => queue_tools::backfill(args),
        Command::Queue(args) => queue_tools::queue(args),
        Command::Blob(args) => blob_tools::blob(args),
        Command::Poison(args) => queue_tools::poison(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}
