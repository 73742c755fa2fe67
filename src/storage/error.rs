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
}

fn fmt_detail(m: &str) -> String {
    if m.is_empty() {
        String::new()
    } else {
        format!(" ({m})")
    }
}

impl StorageError {
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
        }
    }
}
