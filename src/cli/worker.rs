//! `rollq worker`: the long-running queue consumer each replica runs.
//!
//! Parses [`WorkerArgs`] (every flag also reads `ROLLQ_<FLAG>`), connects to storage, logs
//! which account, endpoints and credential are in use, runs the start-up checks (an auth or
//! not-found error exits non-zero with what to fix), then runs [`App`] until a signal,
//! `--exit-when-idle` or `--max-messages`.

use anyhow::Context as _;

use crate::shutdown::{self, Shutdown};
use crate::startup::App;
use crate::storage::connect;
pub use crate::worker::WorkerArgs;
use crate::worker::{Settings, StartupError};

/// Runs `rollq worker` to completion.
pub fn run(args: WorkerArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run_async(args))
}

async fn run_async(args: WorkerArgs) -> anyhow::Result<()> {
    let connection = connect(&args.storage).await?;
    let info = connection.info.clone();
    let settings = Settings::from_args(&args, &info.account).map_err(anyhow::Error::msg)?;
    tracing::info!(
        account = %info.account,
        blob_endpoint = %info.blob_endpoint,
        queue_endpoint = %info.queue_endpoint,
        credential = %info.credential,
        "connecting to storage: {info}"
    );
    let app = App::build(
        settings,
        args.http_addr,
        args.unready_after,
        connection.queues.as_ref(),
        connection.blobs.clone(),
        connection.requests.clone(),
    )
    .await?
    .with_admin_limits(args.admin_limits());
    // A parseable line for scripts and tests that start the worker with --http-addr …:0.
    println!("rollq worker listening on http://{}", app.http_addr());

    match app.worker().check().await {
        Ok(()) => tracing::info!("start-up check passed: queue and containers reachable"),
        Err(StartupError::Storage { what, fix, source }) => {
            anyhow::bail!("{what}: {}\n  fix: {fix}", info.explain(&source));
        }
        Err(e) => return Err(e.into()),
    }

    let shutdown = Shutdown::new();
    let signals = tokio::spawn(shutdown::listen(shutdown.clone()));
    let end = app.run_until_stopped(shutdown).await?;
    signals.abort();
    tracing::info!(reason = ?end, "rollq worker exiting");
    Ok(())
}
