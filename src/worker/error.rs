//! `JobError`: why one message could not be completed, and the only place errors are classified.
//!
//! `process_one` turns every failure into a `JobError` and asks [`JobError::class`] what to do:
//! poison it, retry it later as a failed attempt (the message's own failure), defer it without
//! counting an attempt (the platform's failure), release it (shutdown), or leave it alone
//! (lease lost, or lease uncertain: a renewal got no answer).

use std::io;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::io::BridgeError;
use crate::aggregate::AggregateError;
use crate::storage::{BlobPath, ErrorKind, StorageError};

/// What to do with a message whose work failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// The message or its input is at fault: retrying cannot help. Poison at once.
    Permanent,
    /// The message's own failure that may pass (processing time exceeded, a reducer or
    /// internal error, an output race, a blob replaced mid-read): retry after a backoff delay;
    /// it counts toward `--max-dequeue-count`.
    Attempt,
    /// The platform's failure (storage unreachable, timeouts, 5xx, throttling, authentication
    /// or permission, a missing queue or container): no fault of the message, so it never
    /// counts as an attempt. The message is hidden for its own deferral delay; a failure that
    /// stops every message (`StorageError::is_account_wide`) also pauses the receive loop.
    Platform,
    /// Shutdown or scale-in interrupted the work: release without counting an attempt.
    Release,
    /// Another consumer owns the message now: touch nothing.
    LeaseLost,
    /// A renewal's outcome is unknown, so our pop receipt may be stale: send nothing more
    /// with it and let the message reappear by itself. Not an attempt of the message's.
    LeaseUncertain,
}

impl Class {
    /// The label a poison copy gives the failure that ended the message: `permanent`,
    /// `message` (its own failures) or `platform`.
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Permanent => "permanent",
            Class::Attempt => "message",
            Class::Platform => "platform",
            Class::Release => "release",
            Class::LeaseLost => "lease_lost",
            Class::LeaseUncertain => "lease_uncertain",
        }
    }
}

/// Why a message failed.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The message text is not one of the accepted forms.
    #[error("bad message: {0}")]
    BadMessage(String),
    /// The message names an account or container the worker may not read.
    #[error("refused: {0}")]
    Refused(String),
    /// The named input blob does not exist.
    #[error("input blob {0} not found")]
    InputNotFound(BlobPath),
    /// The message failed more often than `--max-dequeue-count` allows.
    #[error("failed {attempts} times (--max-dequeue-count {max})")]
    TooManyAttempts { attempts: u64, max: u64 },
    /// The message was delivered `--max-deliveries` times, whatever the failures were: the
    /// absolute bound on the work anyone who can write to the queue can cause.
    #[error("delivered {deliveries} times (--max-deliveries {max})")]
    MaxDeliveries { deliveries: u64, max: u64 },
    /// The input is not valid CSV under the reducer's options, or exceeds a limit.
    #[error("invalid input: {0}")]
    Input(#[source] AggregateError),
    /// Reading the input failed with an I/O error that is neither storage nor cancellation
    /// (a corrupt gzip stream is [`AggregateError::CorruptGzip`], an `Input` error).
    #[error("unreadable input: {0}")]
    Unreadable(#[source] io::Error),
    /// A storage call failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Work took longer than `--max-processing-time`; counts as a failed attempt.
    #[error("processing took longer than {0:?} (--max-processing-time)")]
    TimedOut(Duration),
    /// The drain deadline or a second signal interrupted the work.
    #[error("interrupted by shutdown")]
    Shutdown,
    /// Renewal found that another consumer holds the message.
    #[error("lease lost: another consumer owns the message")]
    LeaseLost,
    /// A renewal got no answer, so the pop receipt may be stale: the message was left to
    /// reappear (the work either finished, its output committed, or was stopped before the
    /// last visibility deadline known for sure).
    #[error("lease uncertain: a renewal got no answer; the message is left to reappear")]
    LeaseUncertain,
    /// The conditional output write failed: another writer got there first.
    #[error("output write condition failed: {0}")]
    OutputConflict(StorageError),
    /// A replica racing on the same input wrote an output that does not match ours.
    #[error("output {0} was changed by another writer; will retry")]
    OutputRace(BlobPath),
    /// The blocking reducer task panicked or was lost (a bug): retried, then poisoned.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Why running work was stopped before it finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// Renewal found that another consumer holds the message.
    LeaseLost,
    /// The lease turned uncertain and its last deadline known for sure came.
    LeaseExpired,
    /// The drain deadline or a second signal.
    Shutdown,
    /// `--max-processing-time` ran out.
    TimedOut(Duration),
}

/// Stops running work and remembers why: the reason is recorded before the token fires, so
/// a cancellation that surfaces from deep inside the reducer is reported as what it was.
#[derive(Clone, Debug, Default)]
pub struct Stop {
    token: CancellationToken,
    reason: Arc<OnceLock<StopReason>>,
}

impl Stop {
    /// Stops the work for `reason` (the first reason given wins).
    pub fn stop(&self, reason: StopReason) {
        let _ = self.reason.set(reason);
        self.token.cancel();
    }

    /// The token the storage bridges watch.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// The error the stopped work ends with; `None` while it has not been stopped.
    pub fn error(&self) -> Option<JobError> {
        self.reason.get().map(|r| match *r {
            StopReason::LeaseLost => JobError::LeaseLost,
            StopReason::LeaseExpired => JobError::LeaseUncertain,
            StopReason::Shutdown => JobError::Shutdown,
            StopReason::TimedOut(limit) => JobError::TimedOut(limit),
        })
    }
}

impl JobError {
    /// The one classifier: what to do with the message after this error.
    pub fn class(&self) -> Class {
        match self {
            JobError::BadMessage(_)
            | JobError::Refused(_)
            | JobError::InputNotFound(_)
            | JobError::TooManyAttempts { .. }
            | JobError::MaxDeliveries { .. }
            | JobError::Input(_)
            | JobError::Unreadable(_) => Class::Permanent,
            JobError::Storage(e) => match e.kind {
                ErrorKind::LeaseLost => Class::LeaseLost,
                // A missing input blob is `InputNotFound` above; not found here means a
                // container or the queue vanished: configuration, like a refused credential.
                // A download that delivered other bytes than the pinned blob holds (short,
                // long, or not its Content-MD5) is the path's fault, not the message's: the
                // next read normally succeeds, and `--max-deliveries` still ends a blob whose
                // stored Content-MD5 is simply wrong.
                ErrorKind::Transient
                | ErrorKind::Throttled
                | ErrorKind::Auth
                | ErrorKind::NotFound
                | ErrorKind::Integrity => Class::Platform,
                // The input replaced mid-read, a lost create race, or a 4xx we did not expect:
                // tied to this message, so counted, and a message that keeps meeting one ends.
                ErrorKind::PreconditionFailed | ErrorKind::Conflict | ErrorKind::Other => {
                    Class::Attempt
                }
            },
            JobError::TimedOut(_)
            | JobError::OutputConflict(_)
            | JobError::OutputRace(_)
            | JobError::Internal(_) => Class::Attempt,
            JobError::Shutdown => Class::Release,
            JobError::LeaseLost => Class::LeaseLost,
            JobError::LeaseUncertain => Class::LeaseUncertain,
        }
    }

    /// A short stable label for logs.
    pub fn reason(&self) -> &'static str {
        match self {
            JobError::BadMessage(_) => "bad_message",
            JobError::Refused(_) => "refused",
            JobError::InputNotFound(_) => "input_not_found",
            JobError::TooManyAttempts { .. } => "too_many_attempts",
            JobError::MaxDeliveries { .. } => "max_deliveries",
            JobError::Input(_) => "invalid_input",
            JobError::Unreadable(_) => "unreadable_input",
            JobError::Storage(_) => "storage",
            JobError::TimedOut(_) => "timed_out",
            JobError::Shutdown => "shutdown",
            JobError::LeaseLost => "lease_lost",
            JobError::LeaseUncertain => "lease_uncertain",
            JobError::OutputConflict(_) => "output_conflict",
            JobError::OutputRace(_) => "output_race",
            JobError::Internal(_) => "internal",
        }
    }

    /// Classifies a reducer failure: errors from our own reader and writer carry a
    /// [`BridgeError`]; any other I/O error came from decoding the input (gzip) and is the
    /// input's fault. A cancellation becomes `stop_reason`, the reason it was cancelled for.
    pub fn from_aggregate(e: AggregateError, stop_reason: impl FnOnce() -> JobError) -> JobError {
        match e {
            AggregateError::Io(io) => match BridgeError::take(io) {
                Ok(BridgeError::Storage(se)) => JobError::Storage(se),
                Ok(BridgeError::Cancelled) => stop_reason(),
                Err(io) => JobError::Unreadable(io),
            },
            other => JobError::Input(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Op;

    fn storage(kind: ErrorKind) -> JobError {
        JobError::Storage(StorageError::new(kind, Op::Download, "c/b", ""))
    }

    #[test]
    fn classification() {
        assert_eq!(JobError::BadMessage("x".into()).class(), Class::Permanent);
        assert_eq!(JobError::Refused("x".into()).class(), Class::Permanent);
        assert_eq!(
            JobError::InputNotFound(BlobPath::new("c", "b")).class(),
            Class::Permanent
        );
        assert_eq!(
            JobError::Input(AggregateError::EmptyInput).class(),
            Class::Permanent
        );
        for kind in [
            ErrorKind::Transient,
            ErrorKind::Throttled,
            ErrorKind::Auth,
            ErrorKind::NotFound,
            ErrorKind::Integrity,
        ] {
            assert_eq!(storage(kind).class(), Class::Platform, "{kind:?}");
        }
        for kind in [
            ErrorKind::PreconditionFailed,
            ErrorKind::Conflict,
            ErrorKind::Other,
        ] {
            assert_eq!(storage(kind).class(), Class::Attempt, "{kind:?}");
        }
        assert_eq!(storage(ErrorKind::LeaseLost).class(), Class::LeaseLost);
        assert_eq!(JobError::Shutdown.class(), Class::Release);
        assert_eq!(JobError::LeaseUncertain.class(), Class::LeaseUncertain);
        assert_eq!(
            JobError::TimedOut(Duration::from_secs(1)).class(),
            Class::Attempt
        );
        assert_eq!(JobError::Internal("x".into()).class(), Class::Attempt);
        assert_eq!(
            JobError::OutputRace(BlobPath::new("c", "b")).class(),
            Class::Attempt
        );
    }

    #[test]
    fn reducer_io_errors_are_unwrapped() {
        let se = StorageError::new(ErrorKind::Transient, Op::Download, "c/b", "reset");
        let e = JobError::from_aggregate(
            AggregateError::Io(io::Error::other(BridgeError::Storage(se))),
            || JobError::Shutdown,
        );
        assert!(matches!(e, JobError::Storage(ref s) if s.kind == ErrorKind::Transient));
        let e = JobError::from_aggregate(
            AggregateError::Io(io::Error::other(BridgeError::Cancelled)),
            || JobError::TimedOut(Duration::from_secs(3)),
        );
        assert!(matches!(e, JobError::TimedOut(_)));
        let e = JobError::from_aggregate(
            AggregateError::Io(io::Error::new(
                io::ErrorKind::InvalidData,
                "corrupt deflate",
            )),
            || JobError::Shutdown,
        );
        assert_eq!(e.class(), Class::Permanent);
        // Every reducer error but a read failure is the input's fault.
        for input_error in [
            AggregateError::TooManyBuckets {
                limit: 3,
                reached: 4,
            },
            AggregateError::CorruptGzip("corrupt deflate stream".into()),
        ] {
            let e = JobError::from_aggregate(input_error, || JobError::Shutdown);
            assert_eq!(e.class(), Class::Permanent);
        }
    }
}
