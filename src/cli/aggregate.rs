//! `rollq aggregate`: roll up one local CSV file or stdin.

/// Arguments of `rollq aggregate`.
#[derive(Debug, clap::Args)]
pub struct AggregateArgs {}

/// Runs `rollq aggregate`.
pub fn run(_args: AggregateArgs) -> anyhow::Result<()> {
    anyhow::bail!("rollq aggregate is not built yet")
}
