//! Logging set-up: a tracing subscriber writing to stderr, JSON in a cluster, text locally.
//!
//! Called once by [`crate::cli::run`]; tests install their own subscriber (or none).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// The filter when neither `--log`/`ROLLQ_LOG` nor `RUST_LOG` is given: rollq at info,
/// everything else at warn.
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
    /// Log filter in `tracing` EnvFilter syntax; `RUST_LOG` applies when this is not given
    /// [default: rollq=info,warn].
    #[arg(long, env = "ROLLQ_LOG", global = true)]
    pub log: Option<String>,
}

/// The filter in force: `--log`/`ROLLQ_LOG`, else `RUST_LOG`, else [`DEFAULT_FILTER`]. An
/// invalid filter is an error naming where it came from, never a silent fallback.
pub fn filter(log: Option<&str>, rust_log: Option<&str>) -> Result<EnvFilter, String> {
    let (text, from) = match (log, rust_log) {
        (Some(f), _) => (f, "--log / ROLLQ_LOG"),
        (None, Some(f)) => (f, "RUST_LOG"),
        (None, None) => (DEFAULT_FILTER, "the default"),
    };
    EnvFilter::builder()
        .parse(text)
        .map_err(|e| format!("invalid log filter {text:?} from {from}: {e}"))
}

/// Installs the global subscriber; a second call (e.g. from tests) is a no-op.
pub fn init(args: &LogArgs) -> Result<(), String> {
    let rust_log = std::env::var("RUST_LOG").ok();
    let filter = filter(args.log.as_deref(), rust_log.as_deref())?;
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
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_and_errors() {
        let shown = |log, rust| filter(log, rust).unwrap().to_string();
        assert_eq!(shown(Some("rollq=debug"), Some("warn")), "rollq=debug");
        assert_eq!(shown(None, Some("rollq=trace")), "rollq=trace");
        assert_eq!(
            shown(None, None),
            filter(Some(DEFAULT_FILTER), None).unwrap().to_string()
        );
        let err = filter(Some("rollq=loud"), None).unwrap_err();
        assert!(
            err.contains("ROLLQ_LOG") && err.contains("rollq=loud"),
            "{err}"
        );
        let err = filter(None, Some("=[")).unwrap_err();
        assert!(err.contains("RUST_LOG"), "{err}");
    }
}
