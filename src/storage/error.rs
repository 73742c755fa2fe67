//! `StorageError`: the one error type storage calls return, classified once, with no secrets.

use std::time::Duration;

use super::Op;

/// What kind of failure a storage call met; callers decide retry or poison from this alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The queue, container or blob does not exist.
    NotFound,
    /// The resource exists already (e.g. a conditional create lost the race).
    Conflict,
    /// An If-Match / If-None-Match condition failed: the source changed mid-read.
    PreconditionFailed,
    /// A stale pop receipt: another consumer owns the message now.
    LeaseLost,
    /// 429 / 503 Server Busy: back off (honour `retry_after`).
    Throttled,
    /// Timeouts, connection resets, other 5xx: retry.
    Transient,
    /// 401/403: the credential is wrong or lacks a role.
    Auth,
    /// Anything else (a 4xx we did not expect): not retried.
    Other,
    /// A download delivered other bytes than the blob holds at the pinned ETag: fewer or more
    /// than its size, or bytes whose MD5 is not its Content-MD5. A fault on the way (the blob
    /// itself is what its properties say), so it is retried like a transient failure.
    Integrity,
}

impl ErrorKind {
    /// A short lowercase label, stable for metrics (`rollq_storage_errors_total{kind}`).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "not_found",
            ErrorKind::Conflict => "conflict",
            ErrorKind::PreconditionFailed => "precondition_failed",
            ErrorKind::LeaseLost => "lease_lost",
            ErrorKind::Throttled => "throttled",
            ErrorKind::Transient => "transient",
            ErrorKind::Auth => "auth",
            ErrorKind::Other => "other",
            ErrorKind::Integrity => "integrity",
        }
    }

    /// Storage could not be reached or is shedding load (timeouts, resets, 5xx, throttling):
    /// it passes by itself, so start-up keeps trying instead of exiting.
    pub fn is_unreachable(self) -> bool {
        matches!(self, ErrorKind::Transient | ErrorKind::Throttled)
    }

    /// Storage is unusable for this worker as a whole: unreachable, or refusing its
    /// credential. What turns `/readyz` to 503 once it lasts.
    pub fn is_outage(self) -> bool {
        self.is_unreachable() || self == ErrorKind::Auth
    }

    /// For an update or delete by pop receipt: another consumer owns the message, or the
    /// message is gone (Azure answers 404 for a superseded receipt).
    pub fn is_lease_lost(self) -> bool {
        matches!(self, ErrorKind::LeaseLost | ErrorKind::NotFound)
    }
}

/// A failed storage call: kind, the operation, what it was about, and the service's words.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{op} {target}: {kind_text}{detail}", kind_text = self.kind.as_str(), detail = fmt_detail(&self.message))]
pub struct StorageError {
    pub kind: ErrorKind,
    /// The operation, e.g. `receive`, `download`.
    pub op: Op,
    /// What the call was about (queue name or container/blob), never a secret.
    pub target: String,
    /// Status code and service error code or transport error text; never a secret.
    pub message: String,
    /// From Retry-After, when the service sent one.
    pub retry_after: Option<Duration>,
    /// The request may have reached the service and been applied, but no answer came back
    /// (the connection dropped or reset after sending, or the call timed out). Set by the
    /// adapters; read through [`StorageError::receipt_failure`] for calls by pop receipt.
    pub outcome_unknown: bool,
}

/// What a failed Update or Delete Message by pop receipt says about the lease on the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReceiptFailure {
    /// The service answered that the receipt is not current (400 `PopReceiptMismatch`, 404
    /// `MessageNotFound`): if the receipt was known to be current, another consumer owns the
    /// message now.
    Lost,
    /// No answer: the request may have been applied, in which case the service holds a newer
    /// receipt than ours and ours is stale. Nothing sent with it can be trusted any more.
    Unknown,
    /// The service answered with another failure (5xx, throttling, auth) or the request never
    /// left (connection refused): nothing changed, the receipt is still current.
    Failed,
}

/// Calls about one blob: throttling there is that blob's (a hot partition), not the account's.
fn is_single_blob(op: Op) -> bool {
    matches!(
        op,
        Op::BlobProperties
            | Op::Download
            | Op::Upload
            | Op::StageBlock
            | Op::CommitBlockList
            | Op::DeleteBlob
    )
}

fn fmt_detail(m: &str) -> String {
    if m.is_empty() {
        String::new()
    } else {
        format!(" ({m})")
    }
}

impl StorageError {
    /// Whether this failure stops every message, not just the one that met it: the endpoint
    /// unreachable (timeouts, resets, refused connections, 5xx), the credential refused
    /// (401/403), the account throttled (`ServerBusy` or 429, or throttling of a queue or
    /// container call), or the queue missing. The worker then pauses and probes instead of
    /// receiving messages only to release them.
    ///
    /// Failures tied to one blob or container are not: a throttled hot blob (a 503 on a
    /// single-blob call with another code), a missing container or blob, a condition. The
    /// probe that confirms a pause is what settles the ambiguous cases: Azure answers a hot
    /// partition with `ServerBusy` too, and a reset mid-download may be one short read, so a
    /// probe that succeeds at once ends the suspicion without pausing.
    pub fn is_account_wide(&self) -> bool {
        match self.kind {
            ErrorKind::Transient | ErrorKind::Auth => true,
            ErrorKind::Throttled => {
                let (status, code) = self.status_and_code();
                code == Some("ServerBusy") || status == Some(429) || !is_single_blob(self.op)
            }
            ErrorKind::NotFound => matches!(self.op, Op::Receive | Op::QueueProperties),
            // A read that delivered other bytes than the blob holds is that blob's.
            ErrorKind::Integrity
            | ErrorKind::Conflict
            | ErrorKind::PreconditionFailed
            | ErrorKind::LeaseLost
            | ErrorKind::Other => false,
        }
    }

    /// Whether a conditional write was refused because of the blob already there: 409
    /// (`If-None-Match: *` on Put Blob, `BlobAlreadyExists`) or 412 (a condition not met, as
    /// Put Block List answers too).
    pub fn is_existing_blob(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::Conflict | ErrorKind::PreconditionFailed
        )
    }

    /// Whether a blob call failed because its container does not exist (404
    /// `ContainerNotFound`), not the blob: configuration that can come back, unlike a missing
    /// input blob.
    pub fn is_missing_container(&self) -> bool {
        self.kind == ErrorKind::NotFound && self.status_and_code().1 == Some("ContainerNotFound")
    }

    /// The container a [`StorageError::is_missing_container`] failure is about: the first
    /// segment of the target (`container` or `container/blob`); `None` for other failures.
    pub fn missing_container(&self) -> Option<&str> {
        if !self.is_missing_container() {
            return None;
        }
        self.target.split('/').next().filter(|c| !c.is_empty())
    }

    /// The status and service error code the adapter wrote into `message`
    /// (`HTTP 503 ServerBusy`); `None`s for transport errors.
    fn status_and_code(&self) -> (Option<u16>, Option<&str>) {
        let Some(rest) = self.message.strip_prefix("HTTP ") else {
            return (None, None);
        };
        let mut words = rest.split_whitespace();
        (words.next().and_then(|s| s.parse().ok()), words.next())
    }

    pub fn new(
        kind: ErrorKind,
        op: Op,
        target: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            kind,
            op,
            target: target.into(),
            message: message.into(),
            retry_after: None,
            outcome_unknown: false,
        }
    }

    /// The same error, marked as one whose request may have been applied (see
    /// [`StorageError::outcome_unknown`]).
    pub fn with_unknown_outcome(mut self) -> Self {
        self.outcome_unknown = true;
        self
    }

    /// The one rule for failed calls by pop receipt: an answer that the receipt is not
    /// current means lost; no answer means unknown, whatever the kind; anything else failed.
    pub fn receipt_failure(&self) -> ReceiptFailure {
        if self.outcome_unknown {
            ReceiptFailure::Unknown
        } else if self.kind.is_lease_lost() {
            ReceiptFailure::Lost
        } else {
            ReceiptFailure::Failed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(kind: ErrorKind, op: Op, message: &str) -> StorageError {
        StorageError::new(kind, op, "c/b", message)
    }

    #[test]
    fn account_wide_failures_are_told_from_one_blobs() {
        for (e, wide) in [
            (
                err(ErrorKind::Transient, Op::Download, "connection refused: x"),
                true,
            ),
            (
                err(ErrorKind::Transient, Op::Receive, "HTTP 500 InternalError"),
                true,
            ),
            (
                err(
                    ErrorKind::Auth,
                    Op::BlobProperties,
                    "HTTP 403 AuthorizationFailure",
                ),
                true,
            ),
            (
                err(ErrorKind::Throttled, Op::Download, "HTTP 503 ServerBusy"),
                true,
            ),
            (err(ErrorKind::Throttled, Op::Download, "HTTP 429"), true),
            (err(ErrorKind::Throttled, Op::Receive, "HTTP 503"), true),
            (
                err(ErrorKind::Throttled, Op::ContainerProperties, "HTTP 503"),
                true,
            ),
            (
                err(ErrorKind::NotFound, Op::Receive, "HTTP 404 QueueNotFound"),
                true,
            ),
            // A hot blob: throttled on a call about that blob alone.
            (err(ErrorKind::Throttled, Op::Download, "HTTP 503"), false),
            (
                err(
                    ErrorKind::Throttled,
                    Op::BlobProperties,
                    "HTTP 503 OperationTimedOut",
                ),
                false,
            ),
            (
                err(
                    ErrorKind::NotFound,
                    Op::BlobProperties,
                    "HTTP 404 ContainerNotFound",
                ),
                false,
            ),
            (
                err(ErrorKind::PreconditionFailed, Op::Download, "HTTP 412"),
                false,
            ),
            (err(ErrorKind::Other, Op::Upload, "HTTP 400"), false),
            (
                err(
                    ErrorKind::LeaseLost,
                    Op::Update,
                    "HTTP 400 PopReceiptMismatch",
                ),
                false,
            ),
        ] {
            assert_eq!(e.is_account_wide(), wide, "{e}");
        }
    }

    #[test]
    fn a_missing_container_is_named_from_the_target() {
        let e = |op, target: &str, message: &str| {
            StorageError::new(ErrorKind::NotFound, op, target, message)
        };
        let blob = e(Op::BlobProperties, "in/a.csv", "HTTP 404 ContainerNotFound");
        assert_eq!(blob.missing_container(), Some("in"));
        let container = e(Op::ContainerProperties, "in", "HTTP 404 ContainerNotFound");
        assert_eq!(container.missing_container(), Some("in"));
        // A missing blob, or a missing queue, is no missing container.
        let missing_blob = e(Op::BlobProperties, "in/a.csv", "HTTP 404 BlobNotFound");
        assert_eq!(missing_blob.missing_container(), None);
        assert_eq!(
            e(Op::Receive, "q", "HTTP 404 QueueNotFound").missing_container(),
            None
        );
    }

    #[test]
    fn receipt_failures() {
        let e = |kind| StorageError::new(kind, Op::Renew, "q/m", "");
        assert_eq!(
            e(ErrorKind::LeaseLost).receipt_failure(),
            ReceiptFailure::Lost
        );
        assert_eq!(
            e(ErrorKind::NotFound).receipt_failure(),
            ReceiptFailure::Lost
        );
        assert_eq!(
            e(ErrorKind::Transient).receipt_failure(),
            ReceiptFailure::Failed
        );
        assert_eq!(
            e(ErrorKind::Throttled).receipt_failure(),
            ReceiptFailure::Failed
        );
        assert_eq!(
            e(ErrorKind::Transient)
                .with_unknown_outcome()
                .receipt_failure(),
            ReceiptFailure::Unknown
        );
    }
}
