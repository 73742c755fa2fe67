//! Maps SDK errors to [`StorageError`] once; nothing else looks at `azure_core::Error`.

use std::error::Error as _;
use std::time::Duration;

use azure_core::error::ErrorKind as AzKind;
use azure_core::http::StatusCode;

use crate::storage::{ErrorKind, Op, StorageError};

/// Classifies an SDK error for `op` on `target`. `with_receipt` marks update/delete of a
/// message by pop receipt, where Azure's 404 `MessageNotFound` means the lease was lost.
pub fn classify(err: &azure_core::Error, op: Op, target: &str, with_receipt: bool) -> StorageError {
    let (kind, message, retry_after) = match err.kind() {
        AzKind::HttpResponse {
            status,
            error_code,
            raw_response,
        } => {
            let code = error_code.clone().unwrap_or_default();
            let retry_after = raw_response.as_ref().and_then(|r| {
                let h = r.headers();
                let get = |n: &'static str| {
                    h.iter()
                        .find(|(k, _)| k.as_str() == n)
                        .map(|(_, v)| v.as_str().trim().to_owned())
                };
                get("x-ms-retry-after-ms")
                    .and_then(|v| v.parse::<u64>().ok())
                    .map(Duration::from_millis)
                    .or_else(|| {
                        get("retry-after")
                            .and_then(|v| v.parse::<u64>().ok())
                            .map(Duration::from_secs)
                    })
            });
            let kind = status_kind(*status, &code, with_receipt);
            let message = if code.is_empty() {
                format!("HTTP {}", u16::from(*status))
            } else {
                format!("HTTP {} {code}", u16::from(*status))
            };
            (kind, message, retry_after)
        }
        AzKind::Connection => (ErrorKind::Transient, transport_text(err), None),
        AzKind::Io => (ErrorKind::Transient, transport_text(err), None),
        AzKind::Credential => (ErrorKind::Auth, redact(&chain_text(err)), None),
        _ => (ErrorKind::Other, redact(&chain_text(err)), None),
    };
    let mut e = StorageError::new(kind, op, target, message);
    e.retry_after = retry_after;
    // The SDK's reqwest transport reports a failure to connect as `Connection` (nothing was
    // sent) and every later transport failure (reset, closed before the answer, read
    // timeout) as `Io`: the request may have been applied.
    // A 500 (`OperationTimedOut`: "may or may not have succeeded on the server side"), 502 or
    // 504 comes from a front end that may have passed the request on; 503 and 429 are
    // refusals before any work.
    e.outcome_unknown = match err.kind() {
        AzKind::Io => true,
        AzKind::HttpResponse { status, .. } => matches!(u16::from(*status), 500 | 502 | 504),
        _ => false,
    };
    e
}

fn status_kind(status: StatusCode, code: &str, with_receipt: bool) -> ErrorKind {
    match u16::from(status) {
        // Azurite answers a stale receipt with 400; Azure may answer 404 MessageNotFound.
        400 if code == "PopReceiptMismatch" => ErrorKind::LeaseLost,
        404 if with_receipt && (code == "MessageNotFound" || code.is_empty()) => {
            ErrorKind::LeaseLost
        }
        404 => ErrorKind::NotFound,
        409 => ErrorKind::Conflict,
        412 => ErrorKind::PreconditionFailed,
        401 | 403 => ErrorKind::Auth,
        429 | 503 => ErrorKind::Throttled,
        408 => ErrorKind::Transient,
        s if s >= 500 => ErrorKind::Transient,
        _ => ErrorKind::Other,
    }
}

fn transport_text(err: &azure_core::Error) -> String {
    let text = chain_text(err);
    let lower = text.to_ascii_lowercase();
    let what = if lower.contains("timed out") || lower.contains("timeout") {
        "timed out"
    } else if lower.contains("refused") {
        "connection refused"
    } else if lower.contains("reset") {
        "connection reset"
    } else if matches!(err.kind(), AzKind::Connection) {
        "cannot connect"
    } else {
        "transport error"
    };
    format!("{what}: {}", redact(&text))
}

/// The error and its sources, joined: the SDK's top message alone hides the cause.
fn chain_text(err: &azure_core::Error) -> String {
    let mut parts = vec![err.to_string()];
    let mut src = err.source();
    while let Some(s) = src {
        let t = s.to_string();
        if !parts.iter().any(|p| p.contains(&t)) {
            parts.push(t);
        }
        src = s.source();
    }
    parts.join(": ")
}

/// Drops URL query strings from transport texts: a SAS token travels in the query.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_query = false;
    for c in text.chars() {
        if in_query {
            if c.is_whitespace() || c == ')' || c == '"' || c == '\'' {
                in_query = false;
                out.push(c);
            }
            continue;
        }
        if c == '?' {
            in_query = true;
            out.push_str("?<query redacted>");
            continue;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_query_strings() {
        let t = "error sending request for url (https://a.blob.core.windows.net/c/b?sv=1&sig=SECRET): refused";
        let r = redact(t);
        assert!(!r.contains("SECRET"), "{r}");
        assert!(r.ends_with("?<query redacted>): refused"), "{r}");
    }

    #[test]
    fn transport_failures_after_sending_have_an_unknown_outcome() {
        let io = azure_core::Error::new(AzKind::Io, "connection closed before message completed");
        let e = classify(&io, Op::Renew, "q/m", true);
        assert_eq!(e.kind, ErrorKind::Transient);
        assert!(e.outcome_unknown);
        let refused = azure_core::Error::new(AzKind::Connection, "connection refused");
        let e = classify(&refused, Op::Renew, "q/m", true);
        assert_eq!(e.kind, ErrorKind::Transient);
        assert!(!e.outcome_unknown, "nothing was sent");
    }

    #[test]
    fn status_classification() {
        let s = |n: u16| StatusCode::from(n);
        assert_eq!(
            status_kind(s(400), "PopReceiptMismatch", true),
            ErrorKind::LeaseLost
        );
        assert_eq!(
            status_kind(s(404), "MessageNotFound", true),
            ErrorKind::LeaseLost
        );
        assert_eq!(
            status_kind(s(404), "QueueNotFound", true),
            ErrorKind::NotFound
        );
        assert_eq!(
            status_kind(s(404), "MessageNotFound", false),
            ErrorKind::NotFound
        );
        assert_eq!(
            status_kind(s(409), "BlobAlreadyExists", false),
            ErrorKind::Conflict
        );
        assert_eq!(
            status_kind(s(412), "ConditionNotMet", false),
            ErrorKind::PreconditionFailed
        );
        assert_eq!(
            status_kind(s(403), "AuthenticationFailed", false),
            ErrorKind::Auth
        );
        assert_eq!(
            status_kind(s(503), "ServerBusy", false),
            ErrorKind::Throttled
        );
        assert_eq!(status_kind(s(429), "", false), ErrorKind::Throttled);
        assert_eq!(status_kind(s(500), "", false), ErrorKind::Transient);
        assert_eq!(
            status_kind(s(413), "RequestBodyTooLarge", false),
            ErrorKind::Other
        );
    }
}
