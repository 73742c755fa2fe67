//! The worker's settings: the `rollq worker` flags ([`WorkerArgs`], every default written
//! there once) and the validated [`Settings`] made from them.
//!
//! `cli::worker` parses the flags and calls [`Settings::from_args`], which validates once;
//! tests start from [`Settings::with_defaults`], which reads no process environment.

use std::net::SocketAddr;
use std::time::Duration;

use crate::aggregate::{ReducerArgs, Spec};
use crate::storage::{ReadOptions, StorageArgs};

use super::job::MessageEncoding;

/// The longest queue name whose `-poison` twin is still a valid queue name (63 characters).
pub const MAX_QUEUE_NAME: usize = 63 - "-poison".len();

/// Validated worker settings: built once from [`WorkerArgs`] by [`Settings::from_args`].
#[derive(Clone, Debug)]
pub struct Settings {
    /// The queue to consume; its poison twin is `<queue>-poison`.
    pub queue: String,
    /// The storage account the worker is connected to (events naming another are refused).
    pub account: String,
    /// Where bare blob names live.
    pub container: String,
    /// Further containers messages may name.
    pub allowed_containers: Vec<String>,
    /// Where outputs go; `None` writes next to the input.
    pub output_container: Option<String>,
    pub message_encoding: MessageEncoding,
    pub visibility_timeout: Duration,
    pub max_in_flight: usize,
    /// Bytes the jobs in flight may reserve together (`--memory-budget`, see `budget`).
    pub memory_budget: u64,
    /// Messages received ahead and waiting locally for a slot (`--prefetch`).
    pub prefetch: usize,
    pub max_processing_time: Duration,
    pub max_dequeue_count: u64,
    /// Deliveries (the dequeue count, every failure and release included) after which a
    /// message is poisoned; `None` is off.
    pub max_deliveries: Option<u64>,
    pub max_poll_interval: Duration,
    pub exit_when_idle: Option<Duration>,
    pub max_messages: Option<u64>,
    pub drain_timeout: Duration,
    pub queue_stats_interval: Duration,
    /// First retry delay after a transient failure; doubles per failed attempt.
    pub retry_delay: Duration,
    /// Cap of the retry delay.
    pub max_retry_delay: Duration,
    pub read: ReadOptions,
    /// Output block size: the sink holds at most this much before staging.
    pub upload_block_bytes: usize,
    pub spec: Spec,
    /// What a poison copy holds: the envelope with the reason, or the text verbatim.
    pub poison_format: PoisonFormat,
    /// Named in poison copies: `--worker-name`, else the host name (the pod's name).
    pub worker_name: String,
}

/// What `<queue>-poison` receives (`--poison-format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PoisonFormat {
    /// A `$rollq` envelope holding the original text and why it was poisoned.
    Envelope,
    /// The original text as it is (Azure Functions' behaviour), for tools that read bodies.
    Verbatim,
}

/// The host name (on Kubernetes, the pod's name), or `unknown`.
fn host_name() -> String {
    // The kernel's own record first; the file many distributions keep second.
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_owned())
        .find(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

impl Settings {
    /// The settings `args` describe for the account the connection resolved to, validated.
    pub fn from_args(args: &WorkerArgs, account: &str) -> Result<Settings, String> {
        let spec = args
            .reducer
            .to_spec()
            .map_err(|e| format!("invalid reducer options: {e}"))?;
        let settings = Settings {
            queue: args.queue.clone(),
            account: account.to_owned(),
            container: args.container.clone(),
            allowed_containers: args.allowed_containers.clone(),
            output_container: args.output_container.clone(),
            message_encoding: args.message_encoding,
            visibility_timeout: args.visibility_timeout,
            max_in_flight: args.max_in_flight,
            memory_budget: match args.memory_budget {
                Some(b) => b as u64,
                // No limit readable at all: the count (--max-in-flight) is the only bound.
                None => super::budget::default_bytes().map_or(u64::MAX, |(b, _)| b),
            },
            prefetch: args.prefetch,
            max_processing_time: args.max_processing_time,
            max_dequeue_count: args.max_dequeue_count,
            max_deliveries: (args.max_deliveries > 0).then_some(args.max_deliveries),
            max_poll_interval: args.max_poll_interval,
            exit_when_idle: args.exit_when_idle,
            max_messages: args.max_messages,
            drain_timeout: args.drain_timeout,
            queue_stats_interval: args.queue_stats_interval,
            retry_delay: args.retry_delay,
            max_retry_delay: args.max_retry_delay,
            read: ReadOptions {
                partition_bytes: args.download_block_size,
                parallel: args.download_parallel.max(1),
            },
            upload_block_bytes: args.upload_block_size,
            spec,
            poison_format: args.poison_format,
            worker_name: args.worker_name.clone().unwrap_or_else(host_name),
        };
        settings.validate()?;
        Ok(settings)
    }

    /// The documented defaults for `queue` on `account`, bare names in `container`, without
    /// reading any `ROLLQ_*` variable (tests start here and change fields as they need).
    pub fn with_defaults(queue: &str, account: &str, container: &str) -> Result<Settings, String> {
        Settings::from_args(&WorkerArgs::defaults(queue, container), account)
    }

    /// The most messages this worker holds leased at once, running and prefetched: what
    /// KEDA's `queueLength` per replica should be measured against.
    pub fn max_held(&self) -> usize {
        self.max_in_flight + self.prefetch
    }

    /// The poison queue's name.
    pub fn poison_queue(&self) -> String {
        format!("{}-poison", self.queue)
    }

    /// Checks what clap cannot.
    fn validate(&self) -> Result<(), String> {
        if self.queue.len() > MAX_QUEUE_NAME {
            return Err(format!(
                "queue name {:?} is {} characters: at most {MAX_QUEUE_NAME}, so that {:?} fits in 63",
                self.queue,
                self.queue.len(),
                self.poison_queue()
            ));
        }
        if self.queue.ends_with("-poison") {
            return Err(format!(
                "queue {:?} is a poison queue: consume the original queue",
                self.queue
            ));
        }
        if self.visibility_timeout < Duration::from_secs(2) {
            return Err(
                "--visibility-timeout must be at least 2s (renewal runs at half of it)".into(),
            );
        }
        if self.max_in_flight == 0 {
            return Err("--max-in-flight must be at least 1".into());
        }
        if self.max_dequeue_count == 0 {
            return Err("--max-dequeue-count must be at least 1".into());
        }
        Ok(())
    }

    /// Retry delay after the `attempts`-th failed attempt: `retry_delay × 2^(attempts-1)`,
    /// capped at `max_retry_delay`.
    pub fn backoff(&self, attempts: u64) -> Duration {
        let shift = attempts.saturating_sub(1).min(20) as u32;
        self.retry_delay
            .saturating_mul(1u32 << shift)
            .min(self.max_retry_delay)
    }
}

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
    /// Most messages processed concurrently; the memory budget may allow fewer. The default
    /// suits I/O-bound work: a one-day file spends most of its time waiting on storage, and
    /// big jobs are bounded by --memory-budget, not by this count.
    #[arg(long, env = "ROLLQ_MAX_IN_FLIGHT", default_value_t = 16)]
    pub max_in_flight: usize,
    /// Memory the jobs in flight may reserve together (e.g. 192MiB, 512Mi); each job reserves
    /// its download buffers, output blocks and held-state bound before it allocates
    /// [default: 3/4 of the cgroup's memory limit, or of physical memory without one].
    #[arg(long, env = "ROLLQ_MEMORY_BUDGET", value_parser = parse_size)]
    pub memory_budget: Option<usize>,
    /// Work on one message is cancelled after this long and the message retried.
    #[arg(long, env = "ROLLQ_MAX_PROCESSING_TIME", default_value = "1h", value_parser = humantime::parse_duration)]
    pub max_processing_time: Duration,
    /// Failed attempts allowed before a message is poisoned (shutdown releases do not count).
    #[arg(long, env = "ROLLQ_MAX_DEQUEUE_COUNT", default_value_t = 5)]
    pub max_dequeue_count: u64,
    /// Deliveries of one message, every failure and release included, after which it is
    /// poisoned (0: off). The default outlasts a 6 h outage: a message hidden for at least
    /// --retry-delay (5s) per platform failure is delivered at most 4320 times in 6 h.
    #[arg(long, env = "ROLLQ_MAX_DELIVERIES", default_value_t = 5000)]
    pub max_deliveries: u64,
    /// Longest sleep between polls of an empty queue (exponential backoff with jitter).
    #[arg(long, env = "ROLLQ_MAX_POLL_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub max_poll_interval: Duration,
    /// Messages received ahead and waiting locally for a slot, as Azure Functions' queue
    /// trigger prefetches: receives are batched (up to 32) and the next batch is fetched
    /// when running + waiting drops to --max-in-flight + half of this. A message waiting
    /// longer than a quarter of --visibility-timeout is released. One worker holds at most
    /// --max-in-flight + --prefetch messages (KEDA counts them all). 0 turns it off.
    #[arg(long, env = "ROLLQ_PREFETCH", default_value_t = 32)]
    pub prefetch: usize,
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
    /// An admin connection that has not sent a complete request head this long after opening
    /// (or after its last response) is closed.
    #[arg(long, env = "ROLLQ_ADMIN_HEADER_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub admin_header_timeout: Duration,
    /// Admin connections open at once; at the cap a new one evicts the oldest idle one, so
    /// probes are never refused.
    #[arg(long, env = "ROLLQ_ADMIN_MAX_CONNECTIONS", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..))]
    pub admin_max_connections: u64,
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
    /// What the poison queue receives: an envelope with the original text and why, or the
    /// text verbatim (as Azure Functions does).
    #[arg(long, env = "ROLLQ_POISON_FORMAT", value_enum, default_value_t = PoisonFormat::Envelope)]
    pub poison_format: PoisonFormat,
    /// This worker's name in poison copies [default: the host name, the pod's name].
    #[arg(long, env = "ROLLQ_WORKER_NAME")]
    pub worker_name: Option<String>,
    #[command(flatten)]
    pub reducer: ReducerArgs,
    #[command(flatten)]
    pub storage: StorageArgs,
}

/// Parses `4MiB`, `512KiB`, `1048576`, `4M`, `512Mi` (binary units either way; Kubernetes
/// writes `Mi`). By hand: five suffixes do not justify a dependency.
fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: usize = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 4MiB"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "ki" | "kib" => 1 << 10,
        "m" | "mb" | "mi" | "mib" => 1 << 20,
        "g" | "gb" | "gi" | "gib" => 1 << 30,
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
    /// The admin server's limits these flags describe.
    pub fn admin_limits(&self) -> crate::http::AdminLimits {
        crate::http::AdminLimits {
            header_read_timeout: self.admin_header_timeout,
            max_connections: usize::try_from(self.admin_max_connections).unwrap_or(usize::MAX),
        }
    }

    /// The flags' defaults with `--queue` and `--container` given, as if no `ROLLQ_*`
    /// variable were set: the defaults stay written once, in the attributes above.
    pub fn defaults(queue: &str, container: &str) -> WorkerArgs {
        use clap::{Args as _, FromArgMatches as _};
        let command = WorkerArgs::augment_args(clap::Command::new("rollq-worker"))
            .mut_args(|a| a.env(None::<&str>));
        let matches = command
            .try_get_matches_from(["rollq-worker", "--queue", queue, "--container", container])
            .expect("--queue and --container are the only required flags");
        WorkerArgs::from_arg_matches(&matches).expect("matches of this very command")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4MiB").unwrap(), 4 << 20);
        assert_eq!(parse_size("512k").unwrap(), 512 << 10);
        assert_eq!(parse_size("100").unwrap(), 100);
        assert_eq!(parse_size("512Mi").unwrap(), 512 << 20);
        assert_eq!(parse_size("2Gi").unwrap(), 2 << 30);
        assert!(parse_size("0").is_err());
        assert!(parse_size("4XB").is_err());
        assert!(parse_size("MiB").is_err());
    }

    #[test]
    fn admin_limits_default_and_refuse_a_zero_cap() {
        use clap::{Args as _, FromArgMatches as _};
        let limits = WorkerArgs::defaults("jobs", "in").admin_limits();
        assert_eq!(limits.header_read_timeout, Duration::from_secs(5));
        assert_eq!(limits.max_connections, 64);
        let command =
            WorkerArgs::augment_args(clap::Command::new("w")).mut_args(|a| a.env(None::<&str>));
        let base = ["w", "--queue", "q", "--container", "c"];
        let zero = base.iter().copied().chain(["--admin-max-connections", "0"]);
        assert!(
            command.clone().try_get_matches_from(zero).is_err(),
            "a cap of 0 would serve nothing"
        );
        let set = base.iter().copied().chain([
            "--admin-max-connections",
            "4",
            "--admin-header-timeout",
            "1s",
        ]);
        let args =
            WorkerArgs::from_arg_matches(&command.try_get_matches_from(set).unwrap()).unwrap();
        assert_eq!(
            args.admin_limits(),
            crate::http::AdminLimits {
                header_read_timeout: Duration::from_secs(1),
                max_connections: 4
            }
        );
    }

    #[test]
    fn defaults_come_from_the_flags() {
        let s = Settings::with_defaults("jobs", "acct", "in").unwrap();
        assert_eq!(s.visibility_timeout, Duration::from_secs(300));
        assert_eq!(s.max_dequeue_count, 5);
        assert_eq!(s.max_deliveries, Some(5000));
        assert_eq!(s.poison_format, PoisonFormat::Envelope);
        assert!(!s.worker_name.is_empty());
        let mut args = WorkerArgs::defaults("jobs", "in");
        args.max_deliveries = 0;
        let off = Settings::from_args(&args, "acct").unwrap();
        assert_eq!(off.max_deliveries, None, "0 turns the bound off");
        assert_eq!(s.drain_timeout, Duration::from_secs(25));
        assert_eq!(s.read.partition_bytes, 4 << 20);
        assert_eq!(s.upload_block_bytes, 4 << 20);
        assert_eq!(s.max_in_flight, 16);
        assert!(s.memory_budget > 0);
        args = WorkerArgs::defaults("jobs", "in");
        args.memory_budget = Some(64 << 20);
        assert_eq!(
            Settings::from_args(&args, "acct").unwrap().memory_budget,
            64 << 20
        );
        assert_eq!(s.spec.max_buckets, 1_000_000);
        let mut args = WorkerArgs::defaults("jobs", "in");
        args.reducer.bucket = "2h".into();
        let err = Settings::from_args(&args, "acct").unwrap_err();
        assert!(err.contains("invalid reducer options"), "{err}");
        args = WorkerArgs::defaults("jobs", "in");
        args.visibility_timeout = Duration::from_secs(1);
        assert!(Settings::from_args(&args, "acct").is_err());
    }
}
