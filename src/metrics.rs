//! The worker's Prometheus metrics: one `Metrics` value registered into an explicit registry.
//!
//! `startup` creates the registry and `Metrics::register`s into it; the worker holds clones
//! (every field is an `Arc` inside) and `http` encodes the registry for `/metrics`. The names
//! are a contract with the dashboards and alerts (see docs/worker.md); counters are registered
//! without `_total`, which the encoder appends.

use std::fmt::Write as _;
use std::sync::atomic::AtomicU64;

use crate::storage::{ErrorKind, Op};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Buckets of `rollq_processing_duration_seconds`: a small file takes well under a second, a
/// multi-GiB one many minutes; `--max-processing-time` defaults to an hour.
pub const DURATION_BUCKETS: [f64; 15] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0,
];

/// Buckets of `rollq_message_age_seconds` (enqueue → completion): from an idle queue (seconds)
/// to a backlog or a retried message (hours, a day).
pub const AGE_BUCKETS: [f64; 14] = [
    1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0, 43200.0,
    86400.0,
];

/// How one message ended (`rollq_messages_total{outcome}`).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum OutcomeLabel {
    /// Output written (or found up to date) and the message deleted, or its Delete failed
    /// after the output was committed (a redelivery, if any, ends skipped).
    Completed,
    /// Made visible again after a failure (or lost to another consumer).
    Retried,
    /// Moved to `<queue>-poison`.
    Poisoned,
    /// Acknowledged without work (not BlobCreated, empty, an output, output up to date).
    Skipped,
    /// Released on shutdown without counting an attempt.
    Released,
}

impl OutcomeLabel {
    /// Every label, for pre-registering zero series.
    pub const ALL: [OutcomeLabel; 5] = [
        OutcomeLabel::Completed,
        OutcomeLabel::Retried,
        OutcomeLabel::Poisoned,
        OutcomeLabel::Skipped,
        OutcomeLabel::Released,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            OutcomeLabel::Completed => "completed",
            OutcomeLabel::Retried => "retried",
            OutcomeLabel::Poisoned => "poisoned",
            OutcomeLabel::Skipped => "skipped",
            OutcomeLabel::Released => "released",
        }
    }
}

impl EncodeLabelValue for OutcomeLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

/// Result of one lease renewal (`rollq_lease_renewals_total{result}`).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum RenewalResult {
    /// Visibility extended.
    Ok,
    /// The call failed; renewal retries sooner.
    Error,
    /// Another consumer owns the message; work is cancelled.
    Lost,
    /// No answer came back: the renewal may have been applied, so the receipt may be stale.
    /// Renewal stops; work goes on until the last deadline known for sure.
    Uncertain,
}

impl EncodeLabelValue for RenewalResult {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            RenewalResult::Ok => "ok",
            RenewalResult::Error => "error",
            RenewalResult::Lost => "lost",
            RenewalResult::Uncertain => "uncertain",
        })
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: OutcomeLabel,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RenewalLabels {
    result: RenewalResult,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StorageErrorLabels {
    op: String,
    kind: String,
}

/// The `op` of `rollq_storage_requests_total`: the adapter's [`Op`], or `other` for a request
/// sent without one (a call the adapter did not label).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
struct RequestOp(Option<Op>);

impl EncodeLabelValue for RequestOp {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.0.map_or("other", Op::as_str))
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    op: RequestOp,
}

/// The operations whose request series start at 0: what a worker sends in normal operation
/// (the start-up check and creations, the loop, poison moves, queue sampling, staged uploads
/// of large outputs), so `rate()` on the dashboard works from the first scrape. `renew` is
/// absent: renewals are Update Message requests, which the adapter labels `update`.
const WORKER_REQUEST_OPS: [Op; 14] = [
    Op::CreateQueue,
    Op::CreateContainer,
    Op::ContainerProperties,
    Op::QueueProperties,
    Op::Peek,
    Op::Receive,
    Op::Update,
    Op::Delete,
    Op::Send,
    Op::BlobProperties,
    Op::Download,
    Op::Upload,
    Op::StageBlock,
    Op::CommitBlockList,
];

/// `rollq_storage_requests_total{op}`: every storage request sent, one per try.
///
/// The Azure adapter owns one per connection and counts into it whether or not anything
/// registers it (the `rollq blob`/`queue` tools never do); `startup` registers the
/// connection's counter with the other metrics. Cheap to clone: clones share the counts.
#[derive(Clone, Debug, Default)]
pub struct StorageRequests {
    family: Family<RequestLabels, Counter>,
}

impl StorageRequests {
    /// Counts one request sent for `op` (`None`: unlabelled, counted as `other`).
    pub fn count(&self, op: Option<Op>) {
        self.family
            .get_or_create(&RequestLabels { op: RequestOp(op) })
            .inc();
    }

    /// Requests sent for `op` so far.
    pub fn get(&self, op: Option<Op>) -> u64 {
        // `Family::get` reads without creating a series, so asking does not export a zero.
        self.family
            .get(&RequestLabels { op: RequestOp(op) })
            .map_or(0, |c| c.get())
    }

    /// Requests sent so far, over every label.
    pub fn total(&self) -> u64 {
        Op::ALL
            .iter()
            .map(|&op| Some(op))
            .chain([None])
            .map(|op| self.get(op))
            .sum()
    }

    /// Creates the series for `op` at 0 (so dashboards see it before the first request).
    fn zero(&self, op: Op) {
        let _ = self.family.get_or_create(&RequestLabels {
            op: RequestOp(Some(op)),
        });
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: String,
}

/// Every worker metric. Cheap to clone: each field shares its value with the registry.
#[derive(Clone, Debug)]
pub struct Metrics {
    messages: Family<OutcomeLabels, Counter>,
    processing_duration: Histogram,
    message_age: Histogram,
    in_flight: Gauge,
    rows: Counter,
    bad_rows: Counter,
    bytes_read: Counter,
    lease_renewals: Family<RenewalLabels, Counter>,
    storage_errors: Family<StorageErrorLabels, Counter>,
    storage_requests: StorageRequests,
    queue_messages: Gauge,
    poison_queue_messages: Gauge,
    oldest_message_age: Gauge<f64, AtomicU64>,
    last_success: Gauge<f64, AtomicU64>,
    build_info: Family<VersionLabels, Gauge>,
    paused: Gauge,
    pauses: Counter,
    memory_budget: Gauge,
    memory_reserved: Gauge,
    memory_waiting: Gauge,
}

impl Metrics {
    /// Creates the metrics and registers them under `rollq_` in `registry`, with a request
    /// counter of their own (for workers over the in-memory fakes, which send no requests).
    pub fn register(registry: &mut Registry) -> Self {
        Self::register_with_requests(registry, StorageRequests::default())
    }

    /// As [`Metrics::register`], exporting `requests` (the connection's counter, which the
    /// storage adapter fills) as `rollq_storage_requests_total`.
    pub fn register_with_requests(registry: &mut Registry, requests: StorageRequests) -> Self {
        let m = Metrics {
            messages: Family::default(),
            processing_duration: Histogram::new(DURATION_BUCKETS),
            message_age: Histogram::new(AGE_BUCKETS),
            in_flight: Gauge::default(),
            rows: Counter::default(),
            bad_rows: Counter::default(),
            bytes_read: Counter::default(),
            lease_renewals: Family::default(),
            storage_errors: Family::default(),
            storage_requests: requests,
            queue_messages: Gauge::default(),
            poison_queue_messages: Gauge::default(),
            oldest_message_age: Gauge::default(),
            last_success: Gauge::default(),
            build_info: Family::default(),
            paused: Gauge::default(),
            pauses: Counter::default(),
            memory_budget: Gauge::default(),
            memory_reserved: Gauge::default(),
            memory_waiting: Gauge::default(),
        };
        let r = registry.sub_registry_with_prefix("rollq");
        r.register(
            "messages",
            "Messages finished, by outcome",
            m.messages.clone(),
        );
        r.register(
            "processing_duration_seconds",
            "Time from receiving a message to its outcome",
            m.processing_duration.clone(),
        );
        r.register(
            "message_age_seconds",
            "Time from enqueueing a message to its completion",
            m.message_age.clone(),
        );
        r.register(
            "messages_in_flight",
            "Messages being processed now",
            m.in_flight.clone(),
        );
        r.register("rows", "Input rows aggregated", m.rows.clone());
        r.register(
            "bad_rows",
            "Input rows skipped under --max-bad-rows",
            m.bad_rows.clone(),
        );
        r.register(
            "bytes_read",
            "Input bytes downloaded (as stored, before gunzip)",
            m.bytes_read.clone(),
        );
        r.register(
            "lease_renewals",
            "Visibility renewals of leased messages, by result",
            m.lease_renewals.clone(),
        );
        r.register(
            "storage_errors",
            "Failed storage calls, by operation and kind",
            m.storage_errors.clone(),
        );
        r.register(
            "storage_requests",
            "Storage requests sent (each SDK retry counted), by the operation that sent them",
            m.storage_requests.family.clone(),
        );
        r.register(
            "queue_messages",
            "Approximate message count of the queue (sampled; take max over replicas)",
            m.queue_messages.clone(),
        );
        r.register(
            "poison_queue_messages",
            "Approximate message count of the poison queue (sampled)",
            m.poison_queue_messages.clone(),
        );
        r.register(
            "oldest_message_age_seconds",
            "Age of the oldest visible message, from a peek (0 when none is visible)",
            m.oldest_message_age.clone(),
        );
        r.register(
            "last_success_timestamp_seconds",
            "Unix time of the last completed message",
            m.last_success.clone(),
        );
        r.register(
            "build_info",
            "Build information; the value is always 1",
            m.build_info.clone(),
        );
        r.register(
            "worker_paused",
            "1 while the worker has stopped receiving on an account-wide storage failure",
            m.paused.clone(),
        );
        r.register(
            "worker_pauses",
            "Pauses on account-wide storage failures",
            m.pauses.clone(),
        );
        r.register(
            "worker_memory_budget_bytes",
            "The memory budget jobs reserve from (--memory-budget)",
            m.memory_budget.clone(),
        );
        r.register(
            "worker_memory_reserved_bytes",
            "Bytes of the memory budget reserved by jobs in flight",
            m.memory_reserved.clone(),
        );
        r.register(
            "worker_memory_waiting",
            "Jobs waiting for their memory reservation",
            m.memory_waiting.clone(),
        );
        m.build_info
            .get_or_create(&VersionLabels {
                version: env!("CARGO_PKG_VERSION").to_owned(),
            })
            .set(1);
        // Zero series for every outcome, so `rate()` and alerts see them before the first event.
        for outcome in OutcomeLabel::ALL {
            let _ = m.messages.get_or_create(&OutcomeLabels { outcome });
        }
        for result in [
            RenewalResult::Ok,
            RenewalResult::Error,
            RenewalResult::Lost,
            RenewalResult::Uncertain,
        ] {
            let _ = m.lease_renewals.get_or_create(&RenewalLabels { result });
        }
        for op in WORKER_REQUEST_OPS {
            m.storage_requests.zero(op);
        }
        m
    }

    /// Counts one finished message.
    pub fn outcome(&self, outcome: OutcomeLabel) {
        self.messages
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// How many messages ended with `outcome` so far.
    pub fn outcome_count(&self, outcome: OutcomeLabel) -> u64 {
        self.messages
            .get_or_create(&OutcomeLabels { outcome })
            .get()
    }

    /// Records how long one message took.
    pub fn processing_duration(&self, seconds: f64) {
        self.processing_duration.observe(seconds);
    }

    /// Records a completed message's age since it was enqueued.
    pub fn message_age(&self, seconds: f64) {
        self.message_age.observe(seconds);
    }

    /// The in-flight gauge (incremented when work starts, decremented when it ends).
    pub fn in_flight(&self) -> &Gauge {
        &self.in_flight
    }

    /// Adds aggregated and skipped rows.
    pub fn rows(&self, rows: u64, bad_rows: u64) {
        self.rows.inc_by(rows);
        self.bad_rows.inc_by(bad_rows);
    }

    /// The downloaded-bytes counter (the blob reader adds to it as bytes arrive).
    pub fn bytes_read(&self) -> &Counter {
        &self.bytes_read
    }

    /// Counts one renewal attempt.
    pub fn renewal(&self, result: RenewalResult) {
        self.lease_renewals
            .get_or_create(&RenewalLabels { result })
            .inc();
    }

    /// Counts one failed storage call.
    pub fn storage_error(&self, op: Op, kind: ErrorKind) {
        self.storage_errors
            .get_or_create(&StorageErrorLabels {
                op: op.as_str().to_owned(),
                kind: kind.as_str().to_owned(),
            })
            .inc();
    }

    /// How many `op` calls failed with `kind` so far.
    pub fn storage_error_count(&self, op: Op, kind: ErrorKind) -> u64 {
        self.storage_errors
            .get_or_create(&StorageErrorLabels {
                op: op.as_str().to_owned(),
                kind: kind.as_str().to_owned(),
            })
            .get()
    }

    /// The storage request counter (`rollq_storage_requests_total`).
    pub fn storage_requests(&self) -> &StorageRequests {
        &self.storage_requests
    }

    /// Sets the sampled queue figures.
    pub fn queue_stats(&self, queue: u64, poison: u64, oldest_age_seconds: f64) {
        self.queue_messages.set(queue as i64);
        self.poison_queue_messages.set(poison as i64);
        self.oldest_message_age.set(oldest_age_seconds);
    }

    /// The worker paused (true; counted once per pause) or resumed (false).
    pub fn paused(&self, paused: bool) {
        self.paused.set(i64::from(paused));
        if paused {
            self.pauses.inc();
        }
    }

    /// The memory budget's gauges: the budget, bytes reserved, jobs waiting.
    pub fn memory(&self) -> (&Gauge, &Gauge, &Gauge) {
        (
            &self.memory_budget,
            &self.memory_reserved,
            &self.memory_waiting,
        )
    }

    /// How many pauses so far.
    pub fn pause_count(&self) -> u64 {
        self.pauses.get()
    }

    /// Records the time of a completed message.
    pub fn success_now(&self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or_default();
        self.last_success.set(now);
    }
}

/// Encodes a registry in the Prometheus/OpenMetrics text format.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    if out.is_empty() {
        let _ = writeln!(out, "# EOF");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_the_contract() {
        let mut registry = Registry::default();
        let m = Metrics::register(&mut registry);
        m.outcome(OutcomeLabel::Completed);
        m.renewal(RenewalResult::Ok);
        m.storage_error(Op::Receive, ErrorKind::Transient);
        m.processing_duration(1.5);
        m.message_age(3.0);
        m.rows(10, 1);
        m.bytes_read().inc_by(100);
        m.queue_stats(3, 1, 12.5);
        m.success_now();
        m.paused(true);
        m.paused(false);
        m.storage_requests().count(Some(Op::Download));
        m.storage_requests().count(None);
        let text = encode(&registry);
        for line in [
            "rollq_messages_total{outcome=\"completed\"} 1",
            "rollq_messages_total{outcome=\"released\"} 0",
            "rollq_lease_renewals_total{result=\"ok\"} 1",
            "rollq_lease_renewals_total{result=\"uncertain\"} 0",
            "rollq_storage_errors_total{op=\"receive\",kind=\"transient\"} 1",
            "rollq_processing_duration_seconds_count 1",
            "rollq_message_age_seconds_count 1",
            "rollq_messages_in_flight 0",
            "rollq_rows_total 10",
            "rollq_bad_rows_total 1",
            "rollq_bytes_read_total 100",
            "rollq_queue_messages 3",
            "rollq_poison_queue_messages 1",
            "rollq_oldest_message_age_seconds 12.5",
            "rollq_build_info{version=\"",
            "rollq_last_success_timestamp_seconds ",
            "rollq_worker_paused 0",
            "rollq_worker_pauses_total 1",
            "rollq_worker_memory_budget_bytes 0",
            "rollq_worker_memory_reserved_bytes 0",
            "rollq_worker_memory_waiting 0",
            "rollq_storage_requests_total{op=\"download\"} 1",
            "rollq_storage_requests_total{op=\"other\"} 1",
            "rollq_storage_requests_total{op=\"receive\"} 0",
            "rollq_storage_requests_total{op=\"commit block list\"} 0",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }
}
