//! The per-message pipeline: parse, the idempotency check, the streaming reduce and the
//! conditional write, under the processing-time limit, the lease and the drain deadline.
//!
//! Called by [`Worker::process_one`](super::Worker::process_one); never deletes or updates the
//! message (that is the caller's disposition). Whether an output is current is
//! `contract::is_current`, the rule `rollq backfill` shares.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::Worker;
use super::envelope::Envelope;
use super::error::{JobError, Stop, StopReason};
use super::io;
use super::job::{Job, Parsed};
use super::lease::Lease;
use crate::aggregate::{self, Report};
use crate::contract;
use crate::storage::{BlobPath, BlobProperties, Condition, ErrorKind, Op, PutOptions};

/// Where a blocking reduce failed: reading and reducing, or committing the output.
pub(super) enum Failed {
    Reduce(aggregate::AggregateError),
    Write(std::io::Error),
}

/// What a successful job did.
pub(super) enum Done {
    Written(Report),
    Skipped(String),
}

impl Worker {
    /// Runs the job under `--max-processing-time`, the lease and the drain deadline: whichever
    /// fires first cancels the work, and the work is awaited so nothing outlives the message.
    pub(super) async fn run_with_limits(
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
            reason = lease.ended() => reason,
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
            // A missing blob is the message's (poisoned at once); a missing allowed container
            // is the platform's: this message alone is deferred until it exists again.
            Err(e) if e.kind == ErrorKind::NotFound && !e.is_missing_container() => {
                return Err(JobError::InputNotFound(job.input));
            }
            Err(e) => return Err(e.into()),
        };
        super::budget::fit_to_size(&ctx.settings, input.size);
        let output = contract::output_path(&job.input, ctx.settings.output_container.as_deref());
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
            expect: io::Expected::from_properties(&input),
            etag: input.etag,
            opts: ctx.settings.read,
            handle: handle.clone(),
            cancel: stop.token().clone(),
            observe: observe.clone(),
            rest: Default::default(),
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
            let report = match reducer(&spec, &mut source, &mut sink) {
                Ok(report) => report,
                Err(e @ aggregate::AggregateError::Io(_)) => return Err(Failed::Reduce(e)),
                // The input's fault, unless the read delivered other bytes than the blob's:
                // finish that read's check first (an integrity error is retried, not poisoned).
                Err(e) => {
                    source
                        .verify_rest()
                        .map_err(|io| Failed::Reduce(io.into()))?;
                    return Err(Failed::Reduce(e));
                }
            };
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
}
