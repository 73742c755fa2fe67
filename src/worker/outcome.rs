//! [`Outcome`]: how one message ended, its one log line and its metrics.
//!
//! [`Worker::process_one`](super::Worker::process_one) ends every message with exactly one
//! outcome and hands it to [`record`]; nothing below it logs the same failure again.

use std::time::{Duration, SystemTime};

use super::error::JobError;
use crate::metrics::{Metrics, OutcomeLabel};
use crate::storage::Received;

/// How one message ended.
#[derive(Debug)]
pub enum Outcome {
    /// Output written (or found up to date) and the message deleted, or its Delete failed
    /// after the output was committed (a redelivery, if any, ends skipped).
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

/// Counts and logs `outcome` once: duration, in-flight, outcome counter, and for a completed
/// message its age and the last-success time.
pub(super) fn record(
    metrics: &Metrics,
    msg: &Received,
    outcome: &Outcome,
    elapsed: Duration,
    attempts: u64,
) {
    metrics.in_flight().dec();
    metrics.processing_duration(elapsed.as_secs_f64());
    metrics.outcome(outcome.label());
    if let Outcome::Completed { .. } = outcome {
        metrics.success_now();
        if let Some(age) = msg
            .inserted_on
            .and_then(|t| SystemTime::now().duration_since(t).ok())
        {
            metrics.message_age(age.as_secs_f64());
        }
    }
    log_outcome(outcome, elapsed, attempts);
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
