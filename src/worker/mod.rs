//! The queue worker: [`Worker`] and [`Worker::process_one`], the recipe every message follows.
//!
//! `startup::App` builds a [`Worker`] from [`Settings`] and the storage seams, runs
//! [`Worker::check`] and then [`Worker::run`]; tests call [`Worker::process_one`] directly.
//! One message goes lease → parse → idempotency check → stream through the reducer →
//! conditional write → delete, and ends as exactly one [`Outcome`], logged once and counted
//! once. The rooms: `settings` (flags and validated settings), `check` (start-up checks),
//! `receive_loop` (batches, idle backoff, queue gauges, drain), `pipeline` (one job: parse,
//! idempotency, reduce, conditional write), `outcome` (the outcome's log line and metrics),
//! `budget` (the memory each job reserves), `lease`, `envelope` (bookkeeping and poison copies), `backoff` (the delay after platform
//! failures, and the pause account-wide ones start), `job`, `echo` (producer text in logs), `error`, `io` (the blocking bridges).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::aggregate::{self, Report, Spec};
use crate::http::Readiness;
use crate::metrics::Metrics;
use crate::storage::{
    BlobStore, ErrorKind, Op, Queue, QueueService, ReceiptFailure, Received, StorageError,
};

mod backoff;
pub mod budget;
mod check;
pub mod echo;
pub mod envelope;
pub mod error;
pub mod io;
pub mod job;
pub mod lease;
mod outcome;
mod pipeline;
mod receive_loop;
pub mod settings;

use backoff::PauseSignal;
use budget::{Budget, Need, Reservation};
pub use check::StartupError;
use envelope::{Envelope, PoisonNote};
use error::{Class, JobError, Stop, StopReason};
use job::JobRules;
use lease::{Ack, Lease, LeaseParams};
pub use outcome::Outcome;
use pipeline::Done;
pub use receive_loop::RunEnd;
pub use settings::{MAX_QUEUE_NAME, PoisonFormat, Settings, WorkerArgs};

/// Tries at sending one poison copy before the message is left to reappear after its
/// visibility timeout (bounded, so a sick poison queue cannot hold a slot for long).
const POISON_SEND_TRIES: u32 = 3;

/// Pause before the second try, doubled before the third.
const POISON_SEND_PAUSE: Duration = Duration::from_millis(200);

/// How many times this message was delivered and how many of those were failed attempts.
#[derive(Clone, Copy, Debug)]
struct Deliveries {
    dequeue_count: u64,
    attempts: u64,
}

/// Now, as the envelope records times (RFC 3339, whole seconds).
fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
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
    /// Where jobs report account-wide failures for the receive loop to pause on.
    pause: PauseSignal,
    /// `--memory-budget`: every job reserves from it after its lease is held.
    budget: Budget,
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
        let (total, reserved, waiting) = metrics.memory();
        let budget = Budget::new(
            settings.memory_budget,
            total,
            reserved.clone(),
            waiting.clone(),
        );
        Worker {
            ctx: Arc::new(Ctx {
                budget,
                queue: queues.queue(&settings.queue),
                poison: queues.queue(&settings.poison_queue()),
                rules,
                settings,
                blobs,
                metrics,
                readiness,
                observer,
                pause: PauseSignal::default(),
                reducer: aggregate::run,
            }),
        }
    }

    /// Replaces the reducer with a slow or failing double. The seam for the unit tests of the
    /// worker's control flow (cancellation, limits, poison), which no real input can drive
    /// deterministically; compiled only into tests. Call before cloning.
    #[cfg(test)]
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

    /// Processes one received message to its outcome; `interrupt` (the drain deadline or a
    /// second signal) cancels the work and releases the message.
    pub async fn process_one(&self, msg: Received, interrupt: CancellationToken) -> Outcome {
        self.process_until(msg, CancellationToken::new(), interrupt)
            .await
    }

    /// [`Worker::process_one`] as the receive loop runs it: `stop` (the first signal) also
    /// releases the message if it is still waiting for its memory reservation, since a
    /// message that has not started by the stop signal is released rather than started,
    /// like a prefetched one.
    pub(crate) async fn process_until(
        &self,
        msg: Received,
        stop: CancellationToken,
        interrupt: CancellationToken,
    ) -> Outcome {
        let span = tracing::info_span!(
            "message",
            message_id = %msg.id,
            dequeue_count = msg.dequeue_count,
            blob = tracing::field::Empty,
        );
        self.process(msg, stop, interrupt).instrument(span).await
    }

    /// The recipe: lease, run the job under its limits, then dispose of the message by the
    /// result (delete, poison, retry later or release), and record the one outcome.
    async fn process(
        &self,
        msg: Received,
        stop: CancellationToken,
        interrupt: CancellationToken,
    ) -> Outcome {
        let ctx = &self.ctx;
        let s = &ctx.settings;
        let started = Instant::now();
        ctx.metrics.in_flight().inc();
        let mut envelope = Envelope::open(&msg.text);
        envelope.clamp(msg.dequeue_count);
        let attempts = envelope.attempts(msg.dequeue_count);
        let lease = Lease::hold(
            ctx.queue.clone(),
            &msg,
            LeaseParams::new(s.visibility_timeout),
            ctx.metrics.clone(),
            // After the drain deadline the final call does not wait for a renewal in flight.
            interrupt.clone(),
        );
        let d = Deliveries {
            dequeue_count: msg.dequeue_count,
            attempts,
        };
        let result = match self.over_limits(msg.dequeue_count, attempts) {
            Some(e) => Err(e),
            None => match self.reserve(&lease, &stop, &interrupt).await {
                // Held until the work ends, before the message's disposition: deleting or
                // poisoning needs none of the job's buffers.
                Ok(memory) => {
                    memory
                        .scope(self.run_with_limits(
                            &envelope,
                            msg.dequeue_count,
                            &lease,
                            &interrupt,
                        ))
                        .await
                }
                Err(e) => Err(e),
            },
        };
        let outcome = match result {
            Ok(done) => self.complete(lease, done).await,
            Err(e) => self.dispose(lease, &envelope, d, e).await,
        };
        outcome::record(&ctx.metrics, &msg, &outcome, started.elapsed(), attempts);
        outcome
    }

    /// Reserves the job's memory before it allocates any (see `budget` for the sizing). Called
    /// with the lease held, so a message waiting for memory keeps renewing; a lost lease or
    /// the drain deadline ends the wait as it would end the work.
    ///
    /// The stop signal ends the wait too, and the message is released at once (a release,
    /// not an attempt). Waiting on only the drain deadline, as before, held such a message
    /// for the whole drain while the job ahead of it ran, invisible to the replicas that
    /// could take it, and if that job finished first the message started its work after the
    /// signal, only to be interrupted at the deadline or to stretch the drain to it: with
    /// several large jobs queued behind one budget, every stop took the full drain timeout.
    async fn reserve(
        &self,
        lease: &Lease,
        stop: &CancellationToken,
        interrupt: &CancellationToken,
    ) -> Result<Reservation, JobError> {
        let need = Need::before_size(&self.ctx.settings);
        let reason = tokio::select! {
            biased;
            reason = lease.ended() => reason,
            _ = interrupt.cancelled() => StopReason::Shutdown,
            // Before the stop: memory that is free when the stop arrives is still taken (the
            // job was started before the signal and runs inside the drain like any other).
            r = self.ctx.budget.reserve(need.bytes()) => return Ok(r),
            _ = stop.cancelled() => StopReason::Shutdown,
        };
        let stop = Stop::default();
        stop.stop(reason);
        Err(stop.error().expect("stopped above"))
    }

    /// A message received more often than the limits allow is poisoned before any work: this
    /// covers crash loops (deliveries that died without reaching an outcome).
    fn over_limits(&self, dequeue_count: u64, attempts: u64) -> Option<JobError> {
        let s = &self.ctx.settings;
        if let Some(max) = s.max_deliveries
            && dequeue_count > max
        {
            return Some(JobError::MaxDeliveries {
                deliveries: dequeue_count - 1,
                max,
            });
        }
        (attempts > s.max_dequeue_count).then_some(JobError::TooManyAttempts {
            attempts: attempts - 1,
            max: s.max_dequeue_count,
        })
    }

    /// The work is done: delete the message, last. With an uncertain lease the output is
    /// committed but the message is left to reappear; its redelivery is skipped as current.
    async fn complete(&self, lease: Lease, done: Done) -> Outcome {
        let r = lease.complete().await;
        // An uncertain lease sent no delete: there is no storage result to record.
        if !matches!(r, Ok(Ack::LeftToReappear)) {
            self.ctx.observer.record(Op::Delete, &r);
        }
        match (r, done) {
            (Ok(Ack::Deleted), Done::Written(report)) => {
                self.ctx.metrics.rows(report.rows, report.bad_rows);
                Outcome::Completed { rows: report.rows }
            }
            (Ok(Ack::Deleted), Done::Skipped(why)) => Outcome::Skipped(why),
            (Ok(Ack::LeftToReappear), done) => {
                // The rows are in the committed output, so they count now; the redelivery
                // writes nothing.
                if let Done::Written(report) = done {
                    self.ctx.metrics.rows(report.rows, report.bad_rows);
                }
                Outcome::Retried(JobError::LeaseUncertain)
            }
            // The output is committed, so the work is done whatever became of the Delete
            // (the receipt was current: the lease was not uncertain). A refusal is usually
            // our own Delete, an earlier try applied and its answer lost, the SDK's retry
            // meeting 404; a failure may equally follow an applied try (the soak shows both).
            // Then no redelivery will ever count the message, so it counts here. If the
            // message does come back (the Delete was not applied, or another consumer holds
            // it after our lease lapsed), that delivery finds the output current and counts
            // it again, which at-least-once allows. Before, this counted `retried` and
            // completed + skipped could fall short of the messages submitted.
            (Err(e), done) => {
                let lost = e.receipt_failure() == ReceiptFailure::Lost;
                tracing::info!(
                    error.message = %e,
                    lost,
                    "delete failed after the output was committed: done; a redelivery, if any, skips it"
                );
                match done {
                    Done::Written(report) => {
                        self.ctx.metrics.rows(report.rows, report.bad_rows);
                        Outcome::Completed { rows: report.rows }
                    }
                    Done::Skipped(why) => Outcome::Skipped(why),
                }
            }
        }
    }

    /// The work failed: what happens to the message is [`JobError::class`]'s answer, within
    /// the two bounds: `--max-deliveries` for every delivery, `--max-dequeue-count` for the
    /// message's own failures.
    async fn dispose(
        &self,
        lease: Lease,
        envelope: &Envelope,
        d: Deliveries,
        e: JobError,
    ) -> Outcome {
        let s = &self.ctx.settings;
        let max = s.max_dequeue_count;
        // A limit hit before any work (crash loops) counts as the message's own failure.
        let class = match e {
            JobError::TooManyAttempts { .. } | JobError::MaxDeliveries { .. } => Class::Attempt,
            _ => e.class(),
        };
        match e.class() {
            Class::Permanent => self.poison(lease, envelope, d, e, class).await,
            Class::Release => self.release(lease, envelope).await,
            Class::LeaseLost => Outcome::LeaseLost,
            // Stopped before the last known deadline; nothing can be sent with the receipt.
            Class::LeaseUncertain => Outcome::Retried(e),
            Class::Attempt | Class::Platform => match s.max_deliveries {
                Some(max) if d.dequeue_count >= max => {
                    let e = JobError::MaxDeliveries {
                        deliveries: d.dequeue_count,
                        max,
                    };
                    self.poison(lease, envelope, d, e, class).await
                }
                _ if class == Class::Platform => self.defer(lease, envelope, e).await,
                _ if d.attempts >= max => {
                    let e = JobError::TooManyAttempts {
                        attempts: d.attempts,
                        max,
                    };
                    self.poison(lease, envelope, d, e, class).await
                }
                _ => self.retry_later(lease, envelope, d.attempts, e).await,
            },
        }
    }

    /// Hides the message for the backoff delay of its `attempts`-th failure, writing back its
    /// bookkeeping as clamped (so a forged count does not survive the first failure).
    async fn retry_later(
        &self,
        lease: Lease,
        envelope: &Envelope,
        attempts: u64,
        e: JobError,
    ) -> Outcome {
        let text = envelope.failed_at(&now_rfc3339()).rewritten();
        let r = lease
            .update(self.ctx.settings.backoff(attempts), text.as_deref())
            .await;
        self.ctx.observer.record(Op::Update, &r);
        if let Err(u) = r {
            tracing::warn!(error.message = %u, "could not set the retry delay; the message reappears when its timeout lapses");
        }
        Outcome::Retried(e)
    }

    /// A platform failure: hides the message for its own deferral delay (not 0, so replicas
    /// do not spin on it during an outage), recording the deferral so it is not an attempt.
    /// A failure that stops every message is also reported to the receive loop, which pauses.
    async fn defer(&self, lease: Lease, envelope: &Envelope, e: JobError) -> Outcome {
        let retry_after = match &e {
            JobError::Storage(se) => {
                // A missing `--container` stops every message as surely as an outage: each
                // would only be deferred again, so it pauses the loop too (the probe then asks
                // for that container). A missing `--allowed-containers` one does not: messages
                // naming the other containers still work, so only its own are deferred.
                let missing_input =
                    se.missing_container() == Some(self.ctx.settings.container.as_str());
                if se.is_account_wide() || missing_input {
                    self.ctx.pause.report(se);
                }
                se.retry_after
            }
            _ => None,
        };
        let delay = backoff::deferral_delay(&self.ctx.settings, envelope.deferred, retry_after);
        let text = envelope.failed_at(&now_rfc3339()).deferred_once_more();
        if text.is_none() {
            tracing::warn!(
                "message too long to record the platform failure; it counts as an attempt"
            );
        }
        let r = lease.update(delay, text.as_deref()).await;
        self.ctx.observer.record(Op::Update, &r);
        if let Err(u) = r {
            tracing::warn!(error.message = %u, "could not defer; the message reappears when its timeout lapses");
        }
        Outcome::Retried(e)
    }

    /// Makes the message visible at once, recording the release so it is not an attempt.
    async fn release(&self, lease: Lease, envelope: &Envelope) -> Outcome {
        let text = envelope.released_once_more();
        if text.is_none() {
            tracing::warn!("message too long to record the release; it counts as an attempt");
        }
        let r = lease.update(Duration::ZERO, text.as_deref()).await;
        self.ctx.observer.record(Op::Update, &r);
        if let Err(u) = r {
            tracing::warn!(error.message = %u, "could not release; the message reappears when its timeout lapses");
        }
        Outcome::Released
    }

    /// Copies the message to `<queue>-poison` with why (see [`Worker::poison_text`]), then
    /// deletes it. Never for a message whose lease is lost: another consumer may own it. If
    /// the copy cannot be sent, the message is left to reappear after its visibility timeout
    /// and is poisoned then; it always ends.
    async fn poison(
        &self,
        lease: Lease,
        envelope: &Envelope,
        d: Deliveries,
        e: JobError,
        cause: Class,
    ) -> Outcome {
        let ctx = &self.ctx;
        let text = self.poison_text(envelope, d, &e, cause);
        if let Err(send) = self.send_poison(&lease, &text).await {
            if lease.lost().is_cancelled() {
                return Outcome::LeaseLost;
            }
            tracing::warn!(
                error.message = %send,
                poison_queue = ctx.poison.name(),
                reason = e.reason(),
                "could not poison the message; it reappears when its visibility timeout lapses"
            );
            // Dropping the lease stops renewal and touches nothing else.
            drop(lease);
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

    /// The poison copy: by default the envelope with the original text and a [`PoisonNote`];
    /// the original verbatim with `--poison-format verbatim`, or when the envelope would not
    /// fit in a message (the reason is then only in the outcome's log line).
    fn poison_text(
        &self,
        envelope: &Envelope,
        d: Deliveries,
        e: &JobError,
        cause: Class,
    ) -> String {
        let s = &self.ctx.settings;
        if s.poison_format == PoisonFormat::Verbatim {
            return envelope.original.clone();
        }
        let now = now_rfc3339();
        let note = PoisonNote {
            reason: e.reason().to_owned(),
            error: e.to_string(),
            class: cause.as_str().to_owned(),
            deliveries: d.dequeue_count,
            attempts: d.attempts,
            released: envelope.released,
            deferred: envelope.deferred,
            first_failure: envelope
                .first_failure
                .clone()
                .unwrap_or_else(|| now.clone()),
            last_failure: now,
            worker: s.worker_name.clone(),
        };
        envelope.poisoned(note).unwrap_or_else(|| {
            tracing::warn!("message too long for the poison envelope; copied verbatim");
            envelope.original.clone()
        })
    }

    /// Sends the poison copy: creates the poison queue when it is missing, and tries
    /// [`POISON_SEND_TRIES`] times. Stops early if the lease is lost meanwhile.
    async fn send_poison(&self, lease: &Lease, text: &str) -> Result<(), StorageError> {
        let ctx = &self.ctx;
        let mut pause = POISON_SEND_PAUSE;
        let mut tries = 0;
        loop {
            if lease.lost().is_cancelled() {
                return Err(StorageError::new(
                    ErrorKind::LeaseLost,
                    Op::Send,
                    ctx.poison.name(),
                    "lease lost before the poison copy was sent",
                ));
            }
            tries += 1;
            let sent = ctx.poison.send(text).await;
            ctx.observer.record(Op::Send, &sent);
            let err = match sent {
                Ok(_) => return Ok(()),
                Err(err) => err,
            };
            tracing::warn!(error.message = %err, poison_queue = ctx.poison.name(), tries, "could not send to the poison queue");
            if err.kind == ErrorKind::NotFound {
                // Deleted since start-up (which creates it): create it again and retry.
                let created = ctx.poison.create_if_missing().await;
                ctx.observer.record(Op::CreateQueue, &created);
                if let Err(c) = created {
                    tracing::warn!(error.message = %c, poison_queue = ctx.poison.name(), "could not create the poison queue");
                }
            }
            if tries >= POISON_SEND_TRIES {
                return Err(err);
            }
            tokio::time::sleep(pause).await;
            pause *= 2;
        }
    }
}

#[cfg(test)]
mod tests;
