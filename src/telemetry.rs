//! Logging set-up: a tracing subscriber writing to stderr, JSON in a cluster, text locally.
//!
//! Called once by [`crate::cli::run`]; tests install their own subscriber (or none).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// The default filter when `RUST_LOG` is unset: rollq at info, everything else at warn.
pub const DEFAULT_FILTER: &str = "rollq=info,warn";

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (for log collectors in a cluster).
    Json,
}

/// Logging flags shared by every subcommand.
#[derive(Clone, Debug, clap::Args)]
pub struct LogArgs {
    /// Log format.
    #[arg(long, env = "ROLLQ_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    /// Log filter in `tracing` EnvFilter syntax; `RUST_LOG` also works.
    #[arg(long, env = "ROLLQ_LOG", default_value = DEFAULT_FILTER, global = true)]
    pub log: String,
}

/// Installs the global subscriber; a second call (e.g. from tests) is a no-op.
pub fn init(args: &LogArgs) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .or_else(|| EnvFilter::try_new(&args.log).ok())
        .unwrap_or_else(|| EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match args.log_format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
        // Colour only on a terminal: piped or collected logs must stay plain text.
        LogFormat::Text => builder
            .with_target(false)
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
    };
}
