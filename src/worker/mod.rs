//! The queue worker: the receive loop, `process_one` and what happens to each message.
//!
//! `startup::App` builds a [`Worker`] from [`Settings`] and the storage seams and calls
//! [`Worker::run`]; tests call [`Worker::process_one`] directly. One message goes
//! lease → parse → idempotency check → stream through the reducer → conditional write →
//! delete, and ends as exactly one [`Outcome`], logged once and counted once.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rand::Rng;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::aggregate::{self, Report, Spec};
use crate::contract;
use crate::http::Readiness;
use crate::metrics::{Metrics, OutcomeLabel};
use crate::shutdown::Shutdown;
use crate::storage::{
    BlobPath, BlobProperties, BlobStore, Condition, ErrorKind, PutOptions, Queue, QueueService,
    Received, StorageError,
};

pub mod envelope;
pub mod error;
pub mod io;
pub mod job;
pub mod lease;
pub mod settings;

use crate::storage::Op;
use envelope::Envelope;
use error::{Class, JobError, Stop, StopReason};
use job::{Job, JobRules, Parsed};
use lease::{Lease, LeaseParams};
pub use settings::{MAX_QUEUE_NAME, Settings, WorkerArgs};

/// Azure returns at most 32 messages per receive.
const MAX_BATCH: usize = 32;

/// How long releases may take after the drain deadline before the worker exits anyway
/// (a release that does not happen only means the message reappears after its timeout).
const RELEASE_GRACE: Duration = Duration::from_secs(10);

/// How one message ended.
#[derive(Debug)]
pub enum Outcome {
    /// Output written (or found up to date) and the message deleted.
    Completed { rows: u64 },
    /// Acknowledged without work.
    Skipped(String),
    /// Made visible again after a backoff delay (or left to expire when that failed).
    Retried(JobError),
    /// Sent to the poison queue.
    Poisoned(JobError),
    /// Released by shutdown without counting an attempt.
    Released,
    /// Another consumer owns the message now; nothing was touched.
    LeaseLost,
}

impl Outcome {
    /// The metric label (a lost lease counts as `retried`: the message will be processed
    /// again, by whoever holds it).
    pub fn label(&self) -> OutcomeLabel {
        match self {
            Outcome::Completed { .. } => OutcomeLabel::Completed,
            Outcome::Skipped(_) => OutcomeLabel::Skipped,
            Outcome::Retried(_) | Outcome::LeaseLost => OutcomeLabel::Retried,
            Outcome::Poisoned(_) => OutcomeLabel::Poisoned,
            Outcome::Released => OutcomeLabel::Released,
        }
    }
}

/// Why the worker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("{what}: {source}\n  fix: {fix}")]
    Storage {
        what: String,
        fix: String,
        #[source]
        source: Box<StorageError>,
    },
    #[error(
        "container {0:?} does not exist\n  fix: create it or correct --container / --allowed-containers"
    )]
    MissingContainer(String),
}

/// What `run` stopped for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunEnd {
    /// A shutdown signal.
    Stopped,
    /// `--exit-when-idle`: the queue stayed empty long enough.
    Idle,
    /// `--max-messages` were received and processed.
    MaxMessages,
}

/// The reducer entry point; [`aggregate::run`] except in tests that need a deliberately slow
/// or failing one.
pub type ReduceFn = fn(
    &Spec,
    &mut dyn aggregate::Source,
    &mut dyn aggregate::Sink,
) -> Result<Report, aggregate::AggregateError>;

/// The worker. Cheap to clone; clones share everything.
#[derive(Clone, Debug)]
pub struct Worker {
    ctx: Arc<Ctx>,
}

#[derive(Debug)]
struct Ctx {
    settings: Settings,
    rules: JobRules,
    queue: Arc<dyn Queue>,
    poison: Arc<dyn Queue>,
    blobs: Arc<dyn BlobStore>,
    metrics: Metrics,
    readiness: Readiness,
    observer: Arc<Observer>,
    reducer: ReduceFn,
}

/// Turns storage results into metrics and readiness.
#[derive(Debug)]
struct Observer {
    metrics: Metrics,
    readiness: Readiness,
}

impl Observer {
    fn record<T>(&self, op: Op, r: &Result<T, StorageError>) {
        io::Observe::storage_result(self, op, r.as_ref().err());
    }
}

impl io::Observe for Observer {
    fn storage_result(&self, op: Op, error: Option<&StorageError>) {
        match error {
            None => self.readiness.storage_ok(),
            Some(e) => {
                self.metrics.storage_error(op, e.kind);
                if e.kind.is_outage() {
                    self.readiness.storage_failed();
                }
            }
        }
    }

    fn bytes_read(&self, n: u64) {
        self.metrics.bytes_read().inc_by(n);
    }
}

/// Where a blocking reduce failed: reading and reducing, or committing the output.
enum Failed {
    Reduce(aggregate::AggregateError),
    Write(std::io::Error),
}

/// What a successful job did.
enum Done {
    Written(Report),
    Skipped(String),
}

impl Worker {
    /// A worker over the given seams, with settings validated by [`Settings::from_args`].
    pub fn new(
        settings: Settings,
        queues: &dyn QueueService,
        blobs: Arc<dyn BlobStore>,
        metrics: Metrics,
        readiness: Readiness,
    ) -> Worker {
        let rules = JobRules {
            account: settings.account.clone(),
            container: settings.container.clone(),
            allowed_containers: settings.allowed_containers.clone(),
            encoding: settings.message_encoding,
        };
        let observer = Arc::new(Observer {
            metrics: metrics.clone(),
            readiness: readiness.clone(),
        });
        Worker {
            ctx: Arc::new(Ctx {
                queue: queues.queue(&settings.queue),
                poison: queues.queue(&settings.poison_queue()),
                rules,
                settings,
                blobs,
                metrics,
                readiness,
                observer,
                reducer: aggregate::run,
            }),
        }
    }

    /// Replaces the reducer (tests only: a slow or failing double). Call before cloning.
    pub fn with_reducer(mut self, reducer: ReduceFn) -> Worker {
        Arc::get_mut(&mut self.ctx)
            .expect("with_reducer is called before the worker is shared")
            .reducer = reducer;
        self
    }

    /// The settings in use.
    pub fn settings(&self) -> &Settings {
        &self.ctx.settings
    }

    /// Start-up checks: the queue exists, the poison queue is created, the input containers
    /// exist and the output container is created. Auth and not-found errors are returned
    /// with what to fix; a transient error is logged and left to the loop's retries.
    pub async fn check(&self) -> Result<(), StartupError> {
        let s = &self.ctx.settings;
        let fatal = |what: String, fix: &str, e: StorageError| -> Result<(), StartupError> {
            if e.kind.is_unreachable() {
                tracing::warn!(error.message = %e, "{what}: storage not reachable yet; will keep trying");
                return Ok(());
            }
            let fix = if e.kind == ErrorKind::Auth {
                "check the connection string or the identity's roles (Storage Queue Data Message Processor, Storage Blob Data Contributor)"
            } else {
                fix
            };
            Err(StartupError::Storage {
                what,
                fix: fix.into(),
                source: Box::new(e),
            })
        };
        let r = self.ctx.queue.approximate_count().await;
        self.ctx.observer.record(Op::QueueProperties, &r);
        match r {
            Ok(_) => self.ctx.readiness.queue_ok(),
            Err(e) => fatal(
                format!("queue {:?}", s.queue),
                "create the queue (rollq submit creates it) or correct --queue",
                e,
            )?,
        }
        let r = self.ctx.poison.create_if_missing().await;
        self.ctx.observer.record(Op::CreateQueue, &r);
        if let Err(e) = r {
            fatal(
                format!("poison queue {:?}", s.poison_queue()),
                "allow creating queues, or create it",
                e,
            )?;
        }
        let mut inputs = vec![s.container.clone()];
        inputs.extend(s.allowed_containers.iter().cloned());
        for c in inputs {
            let r = self.ctx.blobs.container_exists(&c).await;
            self.ctx.observer.record(Op::ContainerProperties, &r);
            match r {
                Ok(true) => {}
                Ok(false) => return Err(StartupError::MissingContainer(c)),
                Err(e) => fatal(format!("container {c:?}"), "correct the container name", e)?,
            }
        }
        if let Some(out) = &s.output_container {
            let r = self.ctx.blobs.create_container_if_missing(out).await;
            self.ctx.observer.record(Op::CreateContainer, &r);
            if let Err(e) = r {
                fatal(
                    format!("output container {out:?}"),
                    "create it or correct --output-container",
                    e,
                )?;
            }
        }
        Ok(())
    }

    /// Processes one received message to its outcome; `interrupt` (the drain deadline or a
    /// second signal) cancels the work and releases the message.
    pub async fn process_one(&self, msg: Received, interrupt: CancellationToken) -> Outcome {
        let span = tracing::info_span!(
            "message",
            message_id = %msg.id,
            dequeue_count = msg.dequeue_count,
            blob = tracing::field::Empty,
        );
        self.process_one_inner(msg, interrupt)
            .instrument(span)
            .await
    }

    async fn process_one_inner(&self, msg: Received, interrupt: CancellationToken) -> Outcome {
        let ctx = &self.ctx;
        let s = &ctx.settings;
        let started = Instant::now();
        ctx.metrics.in_flight().inc();
        let envelope = Envelope::open(&msg.text);
        let attempts = envelope.attempts(msg.dequeue_count);
        let lease = Lease::hold(
            ctx.queue.clone(),
            &msg,
            LeaseParams::new(s.visibility_timeout),
            ctx.metrics.clone(),
        );

        let result = if attempts > s.max_dequeue_count {
            // Covers crash loops: attempts that died without reaching an outcome.
            Err(JobError::TooManyAttempts {
                attempts: attempts - 1,
                max: s.max_dequeue_count,
            })
        } else {
            self.run_with_limits(&envelope, &lease, &interrupt).await
        };

        let outcome = match result {
            Ok(done) => {
                let r = lease.complete().await;
                ctx.observer.record(Op::Delete, &r);
                match (r, done) {
                    (Ok(()), Done::Written(report)) => {
                        ctx.metrics.rows(report.rows, report.bad_rows);
                        Outcome::Completed { rows: report.rows }
                    }
                    (Ok(()), Done::Skipped(why)) => Outcome::Skipped(why),
                    (Err(e), _) if e.kind.is_lease_lost() => Outcome::LeaseLost,
                    // The output exists: the redelivery will find it and skip the work.
                    (Err(e), _) => Outcome::Retried(JobError::Storage(e)),
                }
            }
            Err(e) => match e.class() {
                Class::Permanent => self.poison(lease, &envelope, e).await,
                Class::Retry if attempts >= s.max_dequeue_count => {
                    let e = JobError::TooManyAttempts {
                        attempts,
                        max: s.max_dequeue_count,
                    };
                    self.poison(lease, &envelope, e).await
                }
                Class::Retry => {
                    let delay = s.backoff(attempts);
                    let r = lease.update(delay, None).await;
                    ctx.observer.record(Op::Update, &r);
                    if let Err(u) = r {
                        tracing::warn!(error.message = %u, "could not set the retry delay; the message reappears when its timeout lapses");
                    }
                    Outcome::Retried(e)
                }
                Class::Release => {
                    let text = envelope.released_once_more();
                    if text.is_none() {
                        tracing::warn!(
                            "message too long to record the release; it counts as an attempt"
                        );
                    }
                    let r = lease.update(Duration::ZERO, text.as_deref()).await;
                    ctx.observer.record(Op::Update, &r);
                    if let Err(u) = r {
                        tracing::warn!(error.message = %u, "could not release; the message reappears when its timeout lapses");
                    }
                    Outcome::Released
                }
                Class::LeaseLost => Outcome::LeaseLost,
            },
        };

        let elapsed = started.elapsed();
        ctx.metrics.in_flight().dec();
        ctx.metrics.processing_duration(elapsed.as_secs_f64());
        ctx.metrics.outcome(outcome.label());
        if let Outcome::Completed { .. } = outcome {
            ctx.metrics.success_now();
            if let Some(age) = msg
                .inserted_on
                .and_then(|t| SystemTime::now().duration_since(t).ok())
            {
                ctx.metrics.message_age(age.as_secs_f64());
            }
        }
        log_outcome(&outcome, elapsed, attempts);
        outcome
    }

    /// Runs the job under `--max-processing-time`, the lease and the drain deadline: whichever
    /// fires first cancels the work, and the work is awaited so nothing outlives the message.
    async fn run_with_limits(
        &self,
        envelope: &Envelope,
        lease: &Lease,
        interrupt: &CancellationToken,
    ) -> Result<Done, JobError> {
        let stop = Stop::default();
        let work = self.run_job(envelope, stop.clone());
        tokio::pin!(work);
        let limit = self.ctx.settings.max_processing_time;
        let reason = tokio::select! {
            biased;
            r = &mut work => return r,
            _ = lease.lost().cancelled() => StopReason::LeaseLost,
            _ = interrupt.cancelled() => StopReason::Shutdown,
            _ = tokio::time::sleep(limit) => StopReason::TimedOut(limit),
        };
        stop.stop(reason);
        match work.await {
            // The work finished just as it was stopped: keep the result.
            Ok(done) => Ok(done),
            // Whatever the stopped work failed with, it failed because it was stopped.
            Err(_) => Err(stop.error().expect("stopped above")),
        }
    }

    /// parse → idempotency check → reduce and write. Never deletes or updates the message.
    async fn run_job(&self, envelope: &Envelope, stop: Stop) -> Result<Done, JobError> {
        let ctx = &self.ctx;
        let job = match Job::parse(&envelope.original, &ctx.rules)? {
            Parsed::Job(job) => job,
            Parsed::Skip(why) => return Ok(Done::Skipped(why.to_string())),
        };
        tracing::Span::current().record("blob", tracing::field::display(&job.input));

        let r = ctx.blobs.properties(&job.input).await;
        ctx.observer.record(Op::BlobProperties, &r);
        let input = match r {
            Ok(p) => p,
            Err(e) if e.kind == ErrorKind::NotFound => {
                return Err(JobError::InputNotFound(job.input));
            }
            Err(e) => return Err(e.into()),
        };
        let output = BlobPath::new(
            ctx.settings
                .output_container
                .clone()
                .unwrap_or_else(|| job.input.container.clone()),
            contract::output_name(&job.input.name),
        );
        let spec = &ctx.settings.spec;
        let is_current = |metadata: &[(String, String)]| {
            contract::is_current(metadata, &job.input, &input.etag, spec)
        };
        let metadata = contract::output_metadata(&job.input, &input.etag, spec);
        let condition = match self.existing_output(&output).await? {
            Some(existing) if is_current(&existing.metadata) => {
                return Ok(Done::Skipped(format!("output {output} is up to date")));
            }
            Some(existing) => Condition::IfMatch(existing.etag),
            None => Condition::IfNotExists,
        };
        let opts = PutOptions {
            condition,
            content_type: Some("text/csv".into()),
            metadata,
        };

        let result = self
            .reduce(job.input.clone(), input.clone(), output.clone(), opts, stop)
            .await;
        match result {
            Ok(report) => Ok(Done::Written(report)),
            // Another replica wrote the output between our check and our commit: if it holds
            // what we would have written, the work is done.
            Err(JobError::OutputConflict(_)) => match self.existing_output(&output).await? {
                Some(winner) if is_current(&winner.metadata) => Ok(Done::Skipped(format!(
                    "output {output} was written by another replica"
                ))),
                _ => Err(JobError::OutputRace(output)),
            },
            Err(e) => Err(e),
        }
    }

    async fn existing_output(&self, output: &BlobPath) -> Result<Option<BlobProperties>, JobError> {
        let r = self.ctx.blobs.properties(output).await;
        match r {
            Ok(p) => {
                self.ctx.readiness.storage_ok();
                Ok(Some(p))
            }
            Err(e) if e.kind == ErrorKind::NotFound => Ok(None),
            Err(e) => {
                self.ctx
                    .observer
                    .record::<()>(Op::BlobProperties, &Err(e.clone()));
                Err(e.into())
            }
        }
    }

    /// Streams the input through the reducer into the output on a blocking thread.
    async fn reduce(
        &self,
        input_path: BlobPath,
        input: BlobProperties,
        output: BlobPath,
        opts: PutOptions,
        stop: Stop,
    ) -> Result<Report, JobError> {
        let ctx = &self.ctx;
        let handle = tokio::runtime::Handle::current();
        let observe: Arc<dyn io::Observe> = ctx.observer.clone();
        let mut source = io::BlobSource {
            blobs: ctx.blobs.clone(),
            path: input_path,
            etag: input.etag,
            opts: ctx.settings.read,
            handle: handle.clone(),
            cancel: stop.token().clone(),
            observe: observe.clone(),
        };
        let mut sink = io::BlobSink::new(
            ctx.blobs.clone(),
            output,
            opts,
            ctx.settings.upload_block_bytes,
            handle,
            stop.token().clone(),
            observe,
        );
        let spec = ctx.settings.spec.clone();
        let reducer = ctx.reducer;
        let joined = tokio::task::spawn_blocking(move || {
            let report = reducer(&spec, &mut source, &mut sink).map_err(Failed::Reduce)?;
            sink.finish().map_err(Failed::Write)?;
            Ok::<_, Failed>(report)
        })
        .await;
        // A cancellation only ever comes from `run_with_limits`, which records why first.
        let stopped = || stop.error().unwrap_or(JobError::Shutdown);
        match joined {
            Ok(Ok(report)) => Ok(report),
            Ok(Err(Failed::Reduce(e))) => Err(JobError::from_aggregate(e, stopped)),
            Ok(Err(Failed::Write(e))) => match JobError::from_aggregate(e.into(), stopped) {
                JobError::Storage(se)
                    if matches!(se.kind, ErrorKind::Conflict | ErrorKind::PreconditionFailed) =>
                {
                    Err(JobError::OutputConflict(se))
                }
                other => Err(other),
            },
            Err(join) => Err(JobError::Internal(format!("reducer task failed: {join}"))),
        }
    }

    async fn poison(&self, lease: Lease, envelope: &Envelope, e: JobError) -> Outcome {
        let ctx = &self.ctx;
        // The producer's text verbatim, as Azure Functions does: a requeue is a plain copy.
        let sent = ctx.poison.send(&envelope.original).await;
        ctx.observer.record(Op::Send, &sent);
        if let Err(send) = sent {
            // Do not delete what we could not copy: retry later instead.
            tracing::warn!(error.message = %send, reason = e.reason(), "could not poison the message; retrying later");
            let r = lease.update(ctx.settings.retry_delay, None).await;
            ctx.observer.record(Op::Update, &r);
            return Outcome::Retried(JobError::Storage(send));
        }
        let r = lease.complete().await;
        ctx.observer.record(Op::Delete, &r);
        if let Err(del) = r {
            // The copy exists; the original comes back and will be poisoned again (a
            // duplicate in the poison queue, never a loss).
            tracing::warn!(error.message = %del, "poisoned, but could not delete the original");
        }
        Outcome::Poisoned(e)
    }

    /// Samples queue figures for the gauges (every replica reports the same queue).
    pub async fn sample_queue_stats(&self) {
        let ctx = &self.ctx;
        let count = ctx.queue.approximate_count().await;
        ctx.observer.record(Op::QueueProperties, &count);
        let poison = ctx.poison.approximate_count().await;
        ctx.observer.record(Op::QueueProperties, &poison);
        let peek = ctx.queue.peek(1).await;
        ctx.observer.record(Op::Peek, &peek);
        if let (Ok(count), Ok(poison), Ok(peek)) = (count, poison, peek) {
            ctx.readiness.queue_ok();
            let oldest = peek
                .first()
                .and_then(|m| m.inserted_on)
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .map_or(0.0, |d| d.as_secs_f64());
            ctx.metrics.queue_stats(count, poison, oldest);
        }
    }

    /// Receives and processes messages until `shutdown`, `--exit-when-idle` or
    /// `--max-messages`, then drains: in-flight work gets `--drain-timeout`, after which (or
    /// at a second signal) it is released.
    pub async fn run(&self, shutdown: Shutdown) -> RunEnd {
        let ctx = &self.ctx;
        let s = &ctx.settings;
        let slots = Arc::new(Semaphore::new(s.max_in_flight));
        let tracker = TaskTracker::new();
        let stop = shutdown.stop.clone();
        let interrupt = shutdown.interrupt.clone();

        let stats_stop = CancellationToken::new();
        let stats = {
            let worker = self.clone();
            let stats_stop = stats_stop.clone();
            let every = s.queue_stats_interval;
            tokio::spawn(async move {
                loop {
                    worker.sample_queue_stats().await;
                    tokio::select! {
                        _ = stats_stop.cancelled() => return,
                        _ = tokio::time::sleep(every) => {}
                    }
                }
            })
        };

        let mut poll = PollBackoff::new(s.max_poll_interval);
        let mut received = 0u64;
        let mut idle_since: Option<Instant> = None;
        let end = loop {
            if let Some(max) = s.max_messages
                && received >= max
            {
                break RunEnd::MaxMessages;
            }
            // Select on waiting, never on working: a slot, then a receive.
            let first = tokio::select! {
                _ = stop.cancelled() => break RunEnd::Stopped,
                p = slots.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            };
            let mut want = (1 + slots.available_permits()).min(MAX_BATCH);
            if let Some(max) = s.max_messages {
                want = want.min((max - received) as usize);
            }
            let r = tokio::select! {
                _ = stop.cancelled() => break RunEnd::Stopped,
                r = ctx.queue.receive(want as u8, s.visibility_timeout) => r,
            };
            ctx.observer.record(Op::Receive, &r);
            let msgs = match r {
                Ok(msgs) => {
                    ctx.readiness.queue_ok();
                    msgs
                }
                Err(e) => {
                    tracing::warn!(error.message = %e, "receive failed; backing off");
                    drop(first);
                    tokio::select! {
                        _ = stop.cancelled() => break RunEnd::Stopped,
                        _ = tokio::time::sleep(poll.next()) => continue,
                    }
                }
            };
            if msgs.is_empty() {
                drop(first);
                if let Some(limit) = s.exit_when_idle {
                    if tracker.is_empty() {
                        let since = *idle_since.get_or_insert_with(Instant::now);
                        if since.elapsed() >= limit && self.queue_is_empty().await {
                            break RunEnd::Idle;
                        }
                    } else {
                        idle_since = None;
                    }
                }
                tokio::select! {
                    _ = stop.cancelled() => break RunEnd::Stopped,
                    _ = tokio::time::sleep(poll.next()) => continue,
                }
            }
            poll.reset();
            idle_since = None;
            received += msgs.len() as u64;
            let mut permits = vec![first];
            for _ in 1..msgs.len() {
                // Only this loop takes permits, and it asked for at most the free ones.
                permits.push(
                    slots
                        .clone()
                        .try_acquire_owned()
                        .expect("receive returned at most the free slots"),
                );
            }
            for (msg, permit) in msgs.into_iter().zip(permits) {
                let worker = self.clone();
                let interrupt = interrupt.clone();
                tracker.spawn(async move {
                    let _slot = permit; // freed when the message reaches its outcome
                    worker.process_one(msg, interrupt).await;
                });
            }
        };

        if end == RunEnd::Stopped {
            ctx.readiness.set_draining();
        }
        tracker.close();
        tracing::info!(in_flight = tracker.len(), reason = ?end, "stopped receiving; draining");
        let deadline = async {
            if end == RunEnd::Stopped {
                tokio::time::sleep(s.drain_timeout).await;
            } else {
                // Batch exits finish their work, unless a signal arrives; then the drain
                // deadline applies from that moment.
                stop.cancelled().await;
                ctx.readiness.set_draining();
                tokio::time::sleep(s.drain_timeout).await;
            }
        };
        tokio::select! {
            _ = tracker.wait() => {}
            _ = deadline => {
                tracing::warn!(in_flight = tracker.len(), "drain timeout: releasing in-flight messages");
                interrupt.cancel();
            }
            _ = interrupt.cancelled() => {
                tracing::warn!(in_flight = tracker.len(), "second signal: releasing in-flight messages");
            }
        }
        if tokio::time::timeout(RELEASE_GRACE, tracker.wait())
            .await
            .is_err()
        {
            tracing::error!(
                in_flight = tracker.len(),
                "releases did not finish; exiting anyway"
            );
        }
        stats_stop.cancel();
        let _ = stats.await;
        tracing::info!(reason = ?end, "worker stopped");
        end
    }

    async fn queue_is_empty(&self) -> bool {
        // Invisible messages (retries waiting out their delay) count: the queue is not done.
        let r = self.ctx.queue.approximate_count().await;
        self.ctx.observer.record(Op::QueueProperties, &r);
        matches!(r, Ok(0))
    }
}

fn log_outcome(outcome: &Outcome, elapsed: Duration, attempts: u64) {
    let secs = elapsed.as_secs_f64();
    match outcome {
        Outcome::Completed { rows } => tracing::info!(
            outcome = "completed",
            rows,
            seconds = secs,
            "message completed"
        ),
        Outcome::Skipped(why) => {
            tracing::info!(outcome = "skipped", reason = %why, seconds = secs, "message skipped")
        }
        Outcome::Retried(e) => {
            tracing::warn!(outcome = "retried", reason = e.reason(), attempts, error.message = %e, error.cause_chain = ?e, seconds = secs, "message will be retried")
        }
        Outcome::Poisoned(e) => {
            tracing::error!(outcome = "poisoned", reason = e.reason(), attempts, error.message = %e, error.cause_chain = ?e, seconds = secs, "message poisoned")
        }
        Outcome::Released => {
            tracing::info!(outcome = "released", seconds = secs, "message released")
        }
        Outcome::LeaseLost => tracing::warn!(
            outcome = "retried",
            reason = "lease_lost",
            seconds = secs,
            "lease lost; another consumer owns the message"
        ),
    }
}

/// Idle polling: exponential from 50 ms up to `--max-poll-interval`, with jitter so replicas
/// do not poll in lockstep.
#[derive(Debug)]
struct PollBackoff {
    current: Duration,
    max: Duration,
}

impl PollBackoff {
    const MIN: Duration = Duration::from_millis(50);

    fn new(max: Duration) -> Self {
        PollBackoff {
            current: Duration::ZERO,
            max: max.max(Self::MIN),
        }
    }

    fn reset(&mut self) {
        self.current = Duration::ZERO;
    }

    /// The next sleep: a random value in [d/2, d] where d doubles up to the maximum.
    fn next(&mut self) -> Duration {
        self.current = (self.current * 2).clamp(Self::MIN, self.max);
        let d = self.current;
        let low = d / 2;
        low + rand::rng().random_range(Duration::ZERO..=d - low)
    }
}

#[cfg(test)]
mod tests;
