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
use crate::storage::{
    BlobPath, BlobProperties, Condition, Download, ErrorKind, Op, PutOptions, StorageError,
};

/// Inputs at least this large have their output checked before the work even on a first
/// delivery. Where it comes from: one HEAD costs a round trip (1.1 ms median against Azurite
/// here, a few ms on Azure), which at the download rate measured for partitioned reads
/// (about 70 MiB/s, `docs/BENCHMARKS.md`) is worth about 80 KiB of input; the HEAD only
/// pays when it finds the output current, which on a first delivery is a duplicate message
/// (a few per cent at most: Event Grid's at-least-once delivery, a resubmission). At a 2 %
/// chance the break-even is 80 KiB / 0.02 = 4 MiB, which is also the default download
/// partition: an input above it needs several GETs anyway, so the HEAD adds less than one
/// request in two. One-day files (about 50 KiB) stay far below and get no HEAD.
pub(super) const CHECK_FIRST_BYTES: u64 = 4 << 20;

/// Whether an output's metadata says it is what this job would write (`contract::is_current`
/// with the job's input, ETag and spec bound).
type IsCurrent<'a> = dyn Fn(&[(String, String)]) -> bool + Sync + 'a;

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
        dequeue_count: u64,
        lease: &Lease,
        interrupt: &CancellationToken,
    ) -> Result<Done, JobError> {
        let stop = Stop::default();
        let work = self.run_job(envelope, dequeue_count, stop.clone());
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

    /// parse → first GET (which pins the ETag and gives the properties) → the output check
    /// where it pays → reduce and conditional write → settle an existing output. Never
    /// deletes or updates the message.
    ///
    /// The request pattern for a first delivery of a small input is one GET and one
    /// `If-None-Match: *` write: the output check costs a HEAD for every file, and it finds an
    /// output only when the work was done before, which on a first delivery is rare (a
    /// duplicate message). So the write itself is the check, and an existing output costs a
    /// HEAD only then (see [`Worker::settle_existing`]). The check runs before the work
    /// where the work is likely done already (a redelivery: the last delivery may have
    /// committed and died before its delete) or where redoing it costs more than the HEAD
    /// is worth (inputs of [`CHECK_FIRST_BYTES`] or more).
    async fn run_job(
        &self,
        envelope: &Envelope,
        dequeue_count: u64,
        stop: Stop,
    ) -> Result<Done, JobError> {
        let ctx = &self.ctx;
        let job = match Job::parse(&envelope.original, &ctx.rules)? {
            Parsed::Job(job) => job,
            Parsed::Skip(why) => return Ok(Done::Skipped(why.to_string())),
        };
        tracing::Span::current().record("blob", tracing::field::display(&job.input));

        let r = ctx.blobs.download(&job.input, ctx.settings.read).await;
        ctx.observer.record(Op::Download, &r);
        let download = match r {
            Ok(d) => d,
            // A missing blob is the message's (poisoned at once); a missing allowed container
            // is the platform's: this message alone is deferred until it exists again.
            Err(e) if e.kind == ErrorKind::NotFound && !e.is_missing_container() => {
                return Err(JobError::InputNotFound(job.input));
            }
            Err(e) => return Err(e.into()),
        };
        let mut download = download;
        if download.properties.content_md5.is_none() {
            self.pin_size(&job.input, &mut download.properties).await?;
        }
        let input = download.properties.clone();
        super::budget::fit_to_size(&ctx.settings, input.size);
        let output = contract::output_path(&job.input, ctx.settings.output_container.as_deref());
        let spec = &ctx.settings.spec;
        let is_current = |metadata: &[(String, String)]| {
            contract::is_current(metadata, &job.input, &input.etag, spec)
        };
        let metadata = contract::output_metadata(&job.input, &input.etag, spec);
        let check_first = dequeue_count > 1 || input.size >= CHECK_FIRST_BYTES;
        let condition = if check_first {
            match self.existing_output(&output).await? {
                // The GET's stream is dropped unread: for a large input, most of it was never
                // asked for (the SDK fetches partitions as they are read).
                Some(existing) if is_current(&existing.metadata) => {
                    return Ok(Done::Skipped(format!("output {output} is up to date")));
                }
                Some(existing) => Condition::IfMatch(existing.etag),
                None => Condition::IfNotExists,
            }
        } else {
            Condition::IfNotExists
        };
        let opts = PutOptions {
            condition,
            content_type: Some("text/csv".into()),
            metadata,
        };

        let result = self
            .reduce(job.input.clone(), download, output.clone(), opts, stop)
            .await;
        match result {
            Ok((report, io::Finish::Written(_))) => Ok(Done::Written(report)),
            Ok((report, io::Finish::Exists(pending))) => {
                self.settle_existing(&job.input, &input, &output, pending, report, &is_current)
                    .await
            }
            // Another replica wrote the output between our check and our commit: if it holds
            // what we would have written, the work is done.
            Err(JobError::OutputConflict(_)) => self.after_lost_race(&output, &is_current).await,
            Err(e) => Err(e),
        }
    }

    /// A blob without a Content-MD5 has only its size to check a read against, and the GET's
    /// own `Content-Range` is the claim of the very response being checked: a response cut
    /// short but framed as a whole (a faulty middlebox) would agree with itself. So for such
    /// blobs the size comes from a HEAD, a second answer, as before issue 14; a blob with an
    /// MD5 (every Put Blob, `rollq submit`'s block uploads) needs none, the hash catches it.
    async fn pin_size(&self, input: &BlobPath, props: &mut BlobProperties) -> Result<(), JobError> {
        let r = self.ctx.blobs.properties(input).await;
        self.ctx.observer.record(Op::BlobProperties, &r);
        match r {
            Ok(head) if head.etag == props.etag => {
                props.size = head.size;
                Ok(())
            }
            // Replaced since the GET: its later ranges fail their If-Match anyway.
            Ok(_) => Ok(()),
            Err(e) if e.kind == ErrorKind::NotFound && !e.is_missing_container() => {
                Err(JobError::InputNotFound(input.clone()))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The `If-None-Match: *` write met an output already there. Current (same input
    /// version and options) → the work was done: skipped, the output untouched. Stale → write
    /// over it with `If-Match` on the ETag just seen, so an output that changes meanwhile is
    /// never replaced, and only while our input is still the current version: an output made
    /// from a newer version than the one we read must not be replaced by ours (the message
    /// is retried instead, and its redelivery reads the newer version).
    async fn settle_existing(
        &self,
        input_path: &BlobPath,
        input: &BlobProperties,
        output: &BlobPath,
        mut pending: io::Pending,
        report: Report,
        is_current: &IsCurrent<'_>,
    ) -> Result<Done, JobError> {
        let condition = match self.existing_output(output).await? {
            Some(existing) if is_current(&existing.metadata) => {
                return Ok(Done::Skipped(format!(
                    "output {output} is up to date: written by another replica or an earlier delivery"
                )));
            }
            Some(existing) => {
                let r = self.ctx.blobs.properties(input_path).await;
                self.ctx.observer.record(Op::BlobProperties, &r);
                match r {
                    Ok(now) if now.etag == input.etag => Condition::IfMatch(existing.etag),
                    // Replaced (or deleted) since we read it: our output is already stale.
                    Ok(_)
                    | Err(StorageError {
                        kind: ErrorKind::NotFound,
                        ..
                    }) => return Err(JobError::OutputRace(output.clone())),
                    Err(e) => return Err(e.into()),
                }
            }
            // Deleted since the write was refused.
            None => Condition::IfNotExists,
        };
        match pending.write(condition).await {
            Ok(_) => Ok(Done::Written(report)),
            Err(e) if e.is_existing_blob() => self.after_lost_race(output, is_current).await,
            Err(e) => Err(e.into()),
        }
    }

    /// A conditional write lost to another writer: done if the winner's output is current,
    /// else a race the message's retry settles.
    async fn after_lost_race(
        &self,
        output: &BlobPath,
        is_current: &IsCurrent<'_>,
    ) -> Result<Done, JobError> {
        match self.existing_output(output).await? {
            Some(winner) if is_current(&winner.metadata) => Ok(Done::Skipped(format!(
                "output {output} was written by another replica"
            ))),
            _ => Err(JobError::OutputRace(output.clone())),
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
        input: Download,
        output: BlobPath,
        opts: PutOptions,
        stop: Stop,
    ) -> Result<(Report, io::Finish), JobError> {
        let ctx = &self.ctx;
        let handle = tokio::runtime::Handle::current();
        let observe: Arc<dyn io::Observe> = ctx.observer.clone();
        let mut source = io::BlobSource {
            blobs: ctx.blobs.clone(),
            path: input_path,
            expect: io::Expected::from_properties(&input.properties),
            etag: input.properties.etag,
            opts: ctx.settings.read,
            handle: handle.clone(),
            cancel: stop.token().clone(),
            observe: observe.clone(),
            rest: Default::default(),
            first: Some(input.stream),
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
            let finish = sink.finish().map_err(Failed::Write)?;
            Ok::<_, Failed>((report, finish))
        })
        .await;
        // A cancellation only ever comes from `run_with_limits`, which records why first.
        let stopped = || stop.error().unwrap_or(JobError::Shutdown);
        match joined {
            Ok(Ok(done)) => Ok(done),
            Ok(Err(Failed::Reduce(e))) => Err(JobError::from_aggregate(e, stopped)),
            Ok(Err(Failed::Write(e))) => match JobError::from_aggregate(e.into(), stopped) {
                JobError::Storage(se) if se.is_existing_blob() => Err(JobError::OutputConflict(se)),
                other => Err(other),
            },
            Err(join) => Err(JobError::Internal(format!("reducer task failed: {join}"))),
        }
    }
}
