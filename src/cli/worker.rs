//! `rollq worker`: the long-running queue consumer each replica runs.
//!
//! Parses [`WorkerArgs`] (every flag also reads `ROLLQ_<FLAG>`), connects to storage, logs
//! which account, endpoints and credential are in use, runs the start-up checks (an auth or
//! not-found error exits non-zero with what to fix), then runs [`App`] until a signal,
//! `--exit-when-idle` or `--max-messages`.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;

use crate::aggregate::ReducerArgs;
use crate::shutdown::{self, Shutdown};
use crate::startup::App;
use crate::storage::{ReadOptions, StorageArgs, connect};
use crate::worker::job::MessageEncoding;
use crate::worker::{Settings, StartupError};

/// Arguments of `rollq worker`.
#[derive(Debug, clap::Args)]
pub struct WorkerArgs {
    /// The queue to consume; failed messages go to `<queue>-poison` (created if missing).
    #[arg(long, env = "ROLLQ_QUEUE")]
    pub queue: String,
    /// The container bare blob names in messages refer to.
    #[arg(long, env = "ROLLQ_CONTAINER")]
    pub container: String,
    /// Further containers messages (JSON, URLs, events) may name; comma-separated.
    #[arg(long, env = "ROLLQ_ALLOWED_CONTAINERS", value_delimiter = ',')]
    pub allowed_containers: Vec<String>,
    /// Where outputs are written (created if missing); default: the input's container.
    #[arg(long, env = "ROLLQ_OUTPUT_CONTAINER")]
    pub output_container: Option<String>,
    /// How message text is encoded: auto detects JSON, base64 JSON and bare names.
    #[arg(long, env = "ROLLQ_MESSAGE_ENCODING", value_enum, default_value_t = MessageEncoding::Auto)]
    pub message_encoding: MessageEncoding,
    /// Visibility timeout of a received message; renewed at half of it while work runs.
    #[arg(long, env = "ROLLQ_VISIBILITY_TIMEOUT", default_value = "5m", value_parser = humantime::parse_duration)]
    pub visibility_timeout: Duration,
    /// Messages processed concurrently [default: the CPUs this process may use].
    #[arg(long, env = "ROLLQ_MAX_IN_FLIGHT")]
    pub max_in_flight: Option<usize>,
    /// Work on one message is cancelled after this long and the message retried.
    #[arg(long, env = "ROLLQ_MAX_PROCESSING_TIME", default_value = "1h", value_parser = humantime::parse_duration)]
    pub max_processing_time: Duration,
    /// Failed attempts allowed before a message is poisoned (shutdown releases do not count).
    #[arg(long, env = "ROLLQ_MAX_DEQUEUE_COUNT", default_value_t = 5)]
    pub max_dequeue_count: u64,
    /// Longest sleep between polls of an empty queue (exponential backoff with jitter).
    #[arg(long, env = "ROLLQ_MAX_POLL_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub max_poll_interval: Duration,
    /// Exit 0 once the queue has stayed empty this long (batch jobs, demos, tests).
    #[arg(long, env = "ROLLQ_EXIT_WHEN_IDLE", value_parser = humantime::parse_duration)]
    pub exit_when_idle: Option<Duration>,
    /// Exit 0 after receiving and finishing this many messages.
    #[arg(long, env = "ROLLQ_MAX_MESSAGES")]
    pub max_messages: Option<u64>,
    /// On SIGTERM, in-flight messages get this long to finish before they are released;
    /// keep it below the pod's terminationGracePeriodSeconds.
    #[arg(long, env = "ROLLQ_DRAIN_TIMEOUT", default_value = "25s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
    /// /readyz turns 503 once storage has been unreachable this long.
    #[arg(long, env = "ROLLQ_UNREADY_AFTER", default_value = "30s", value_parser = humantime::parse_duration)]
    pub unready_after: Duration,
    /// How often the queue gauges (count, poison count, oldest age) are sampled.
    #[arg(long, env = "ROLLQ_QUEUE_STATS_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub queue_stats_interval: Duration,
    /// Address of /healthz, /readyz and /metrics (port 0 picks a free port).
    #[arg(long, env = "ROLLQ_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,
    /// First retry delay after a transient failure; doubles with each failed attempt.
    #[arg(long, env = "ROLLQ_RETRY_DELAY", default_value = "5s", value_parser = humantime::parse_duration)]
    pub retry_delay: Duration,
    /// Cap of the retry delay.
    #[arg(long, env = "ROLLQ_MAX_RETRY_DELAY", default_value = "5m", value_parser = humantime::parse_duration)]
    pub max_retry_delay: Duration,
    /// Download partition size (e.g. 4MiB); memory per message ≈ 2 × parallel × this.
    #[arg(long, env = "ROLLQ_DOWNLOAD_BLOCK_SIZE", default_value = "4MiB", value_parser = parse_size)]
    pub download_block_size: usize,
    /// Download partitions fetched in parallel per message.
    #[arg(long, env = "ROLLQ_DOWNLOAD_PARALLEL", default_value_t = 2)]
    pub download_parallel: usize,
    /// Output block size: the output is staged in blocks this large while it is produced.
    #[arg(long, env = "ROLLQ_UPLOAD_BLOCK_SIZE", default_value = "4MiB", value_parser = parse_size)]
    pub upload_block_size: usize,
    #[command(flatten)]
    pub reducer: ReducerArgs,
    #[command(flatten)]
    pub storage: StorageArgs,
}

/// Parses `4MiB`, `512KiB`, `1048576`, `4M` (binary units either way).
fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: usize = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 4MiB"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => return Err(format!("unknown size unit {other:?} (use KiB, MiB, GiB)")),
    };
    let bytes = n
        .checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))?;
    if bytes == 0 {
        return Err("a size must be greater than 0".into());
    }
    Ok(bytes)
}

impl WorkerArgs {
    /// Validated settings for the account the connection resolved to.
    pub fn to_settings(&self, account: &str) -> anyhow::Result<Settings> {
        let spec = self
            .reducer
            .to_spec()
            .map_err(anyhow::Error::msg)
            .context("invalid reducer options")?;
        let mut s = Settings::new(&self.queue, account, &self.container);
        s.allowed_containers = self.allowed_containers.clone();
        s.output_container = self.output_container.clone();
        s.message_encoding = self.message_encoding;
        s.visibility_timeout = self.visibility_timeout;
        if let Some(n) = self.max_in_flight {
            s.max_in_flight = n;
        }
        s.max_processing_time = self.max_processing_time;
        s.max_dequeue_count = self.max_dequeue_count;
        s.max_poll_interval = self.max_poll_interval;
        s.exit_when_idle = self.exit_when_idle;
        s.max_messages = self.max_messages;
        s.drain_timeout = self.drain_timeout;
        s.queue_stats_interval = self.queue_stats_interval;
        s.retry_delay = self.retry_delay;
        s.max_retry_delay = self.max_retry_delay;
        s.read = ReadOptions {
            partition_bytes: self.download_block_size,
            parallel: self.download_parallel.max(1),
        };
        s.upload_block_bytes = self.upload_block_size;
        s.spec = spec;
        s.validate().map_err(anyhow::Error::msg)?;
        Ok(s)
    }
}

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
    let settings = args.to_settings(&info.account)?;
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
    )
    .await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4MiB").unwrap(), 4 << 20);
        assert_eq!(parse_size("512k").unwrap(), 512 << 10);
        assert_eq!(parse_size("100").unwrap(), 100);
        assert!(parse_size("0").is_err());
        assert!(parse_size("4XB").is_err());
        assert!(parse_size("MiB").is_err());
    }
}
