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
            let mut message = if code.is_empty() {
                format!("HTTP {}", u16::from(*status))
            } else {
                format!("HTTP {} {code}", u16::from(*status))
            };
            // A refused credential says why only in the body ("Invalid token audience.",
            // "The token is expired."); the code alone cannot tell a wrong audience from a
            // missing role, and the fix differs.
            if kind == ErrorKind::Auth
                && let Some(detail) = raw_response.as_ref().and_then(|r| auth_detail(r.body()))
            {
                message = format!("{message}: {detail}");
            }
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

/// The `AuthenticationErrorDetail` of a storage error body, on one line, at most 200
/// characters, with anything between single quotes dropped: Azure's Shared Key refusal
/// quotes the request's signature and the string to sign there, and neither is printed.
fn auth_detail(body: &[u8]) -> Option<String> {
    const OPEN: &str = "<AuthenticationErrorDetail>";
    let text = std::str::from_utf8(body).ok()?;
    let start = text.find(OPEN)? + OPEN.len();
    let end = start + text[start..].find("</AuthenticationErrorDetail>")?;
    let mut out = String::new();
    let mut quoted = false;
    for c in text[start..end].chars() {
        match c {
            '\'' if quoted => {
                quoted = false;
                out.push_str("…'");
            }
            '\'' => {
                quoted = true;
                out.push('\'');
            }
            _ if quoted => {}
            c if c.is_whitespace() => {
                if !out.ends_with(' ') {
                    out.push(' ');
                }
            }
            c => out.push(c),
        }
    }
    if quoted {
        out.push_str("…'");
    }
    let out: String = out.trim().chars().take(200).collect();
    (!out.is_empty()).then_some(out)
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
    fn auth_detail_is_read_and_never_echoes_quoted_material() {
        let azurite =
            b"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>AuthenticationFailed</Code>\
<Message>Server failed to authenticate the request.</Message>\
<AuthenticationErrorDetail>Invalid token audience.</AuthenticationErrorDetail></Error>";
        assert_eq!(
            auth_detail(azurite).as_deref(),
            Some("Invalid token audience.")
        );
        let mac = b"<Error><AuthenticationErrorDetail>The MAC signature found in the HTTP request \
'c2lnbmF0dXJl' is not the same as any computed signature. Server used following string to \
sign: 'GET\n\n/acct/c'.</AuthenticationErrorDetail></Error>";
        let d = auth_detail(mac).unwrap();
        assert!(!d.contains("c2lnbmF0dXJl") && !d.contains("/acct/c"), "{d}");
        assert!(
            d.starts_with("The MAC signature found in the HTTP request '…' is"),
            "{d}"
        );
        assert_eq!(
            auth_detail(b"<Error><Code>AuthorizationFailure</Code></Error>"),
            None
        );
        assert_eq!(auth_detail(b""), None);
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
