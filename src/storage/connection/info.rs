//! [`ConnectionInfo`]: which account, endpoints and credential kind a connection uses, as
//! the user reads it: its `Display` for logs, and [`ConnectionInfo::explain`], the one line the
//! CLI and the worker print for a failed storage call. Never shows a secret.

use std::fmt;

use url::Url;

use super::credential::CredentialKind;
use crate::storage::error::{ErrorKind, StorageError};

/// Which account, endpoints and credential kind a connection uses; safe to log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionInfo {
    pub account: String,
    pub blob_endpoint: Url,
    pub queue_endpoint: Url,
    pub credential: CredentialKind,
}

impl fmt::Display for ConnectionInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "account {}, blob endpoint {}, queue endpoint {}, credential: {}",
            self.account,
            display_url(&self.blob_endpoint),
            display_url(&self.queue_endpoint),
            self.credential
        )
    }
}

/// An endpoint without query or credentials (a SAS never reaches a message this way).
pub(super) fn display_url(u: &Url) -> String {
    let mut u = u.clone();
    u.set_query(None);
    let _ = u.set_password(None);
    let _ = u.set_username("");
    u.as_str().trim_end_matches('/').to_owned()
}

impl ConnectionInfo {
    /// One clear line for a failed call: which account, endpoint and credential was used,
    /// what went wrong, and what to check. Shared by the CLI and the worker.
    pub fn explain(&self, err: &StorageError) -> String {
        // The adapter names every queue operation `queue …` (blob ones `blob …`/`container …`),
        // which is how the right endpoint is picked for the message.
        let queue_side = err.op.service() == crate::storage::Service::Queue;
        let endpoint = display_url(if queue_side {
            &self.queue_endpoint
        } else {
            &self.blob_endpoint
        });
        let what = if queue_side {
            "queue"
        } else {
            "container or blob"
        };
        let hint = match err.kind {
            ErrorKind::Auth => match &self.credential {
                CredentialKind::DevelopmentStorage | CredentialKind::AccountKey => {
                    "check the account name and key in the connection string".to_owned()
                }
                CredentialKind::SharedAccessSignature => {
                    "check the SAS token's expiry, permissions, services and resource types"
                        .to_owned()
                }
                _ => "check that the identity has the Storage Queue Data Contributor and \
                      Storage Blob Data Contributor roles on the account"
                    .to_owned(),
            },
            ErrorKind::NotFound => {
                format!("check the {what} name `{}`, or create it", err.target)
            }
            ErrorKind::Throttled => {
                "the service is busy: it will be retried; check the account's request rate"
                    .to_owned()
            }
            ErrorKind::Transient => {
                let local = Url::parse(&endpoint)
                    .ok()
                    .and_then(|u| u.host_str().map(|h| h == "127.0.0.1" || h == "localhost"))
                    .unwrap_or(false);
                if local {
                    "check that the endpoint is reachable (is Azurite running on that port?)"
                        .to_owned()
                } else {
                    "check that the endpoint is reachable: URL, DNS, firewall and network rules"
                        .to_owned()
                }
            }
            ErrorKind::LeaseLost => {
                "another consumer owns the message now (its visibility timeout lapsed)".to_owned()
            }
            ErrorKind::Conflict => "it exists already".to_owned(),
            ErrorKind::PreconditionFailed => {
                "the blob changed meanwhile; read it again and retry".to_owned()
            }
            ErrorKind::Other => "check the request and the account's settings".to_owned(),
            ErrorKind::Integrity => {
                "the download did not match the blob's size or Content-MD5; read it again"
                    .to_owned()
            }
        };
        format!(
            "{err}; account {}, endpoint {endpoint}, credential: {}; {hint}",
            self.account, self.credential
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_display_strips_queries() {
        let info = ConnectionInfo {
            account: "a".into(),
            blob_endpoint: Url::parse("https://a.blob.core.windows.net/?sig=SECRET").unwrap(),
            queue_endpoint: Url::parse("https://a.queue.core.windows.net/").unwrap(),
            credential: CredentialKind::SharedAccessSignature,
        };
        let text = info.to_string();
        assert!(!text.contains("SECRET"), "{text}");
        assert!(text.contains("https://a.blob.core.windows.net"), "{text}");
    }
}
