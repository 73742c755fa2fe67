//! The resolver: [`StorageArgs`] become [`Resolved`] settings, which `azure::build` turns into
//! clients. Resolution order: a connection string, else an account name with Entra ID, else
//! the local emulator.

use std::time::Duration;

use secrecy::ExposeSecret;

use super::args::StorageArgs;
use super::connection_string::{Source, endpoint, parse_connection_string};
use super::credential::{Auth, CredentialKind};
use super::error::ConnectError;
use super::info::{ConnectionInfo, display_url};

/// The parsed, resolved settings: where to connect and how to authorise.
#[derive(Clone, Debug)]
pub(crate) struct Resolved {
    pub info: ConnectionInfo,
    pub auth: Auth,
    pub timeout: Duration,
}

pub(crate) fn resolve(args: &StorageArgs) -> Result<Resolved, ConnectError> {
    let timeout = args.storage_timeout;
    if timeout < Duration::from_secs(1) {
        return Err(ConnectError::Settings(format!(
            "--storage-timeout {} is too short: give at least 1s",
            humantime::format_duration(timeout)
        )));
    }
    let source = match (&args.connection_string, &args.account) {
        (Some(cs), _) => parse_connection_string(cs.expose_secret())?,
        (None, Some(account)) => entra_id(account, args)?,
        (None, None) => parse_connection_string("UseDevelopmentStorage=true")?,
    };
    let info = ConnectionInfo {
        account: source.account,
        blob_endpoint: args.blob_endpoint.clone().unwrap_or(source.blob_endpoint),
        queue_endpoint: args.queue_endpoint.clone().unwrap_or(source.queue_endpoint),
        credential: source.credential,
    };
    // Checked after the endpoint flags apply: they are what the token would be sent to.
    if matches!(source.auth, Auth::Workload { .. } | Auth::Managed { .. }) {
        for u in [&info.blob_endpoint, &info.queue_endpoint] {
            if u.scheme() != "https" {
                return Err(ConnectError::Settings(format!(
                    "{} uses {}: Entra ID tokens are only sent over https",
                    display_url(u),
                    u.scheme()
                )));
            }
        }
    }
    Ok(Resolved {
        info,
        auth: source.auth,
        timeout,
    })
}

/// An account name with Entra ID tokens: workload identity when a federated token file is
/// given, else managed identity; the account's public endpoints.
fn entra_id(account: &str, args: &StorageArgs) -> Result<Source, ConnectError> {
    validate_account(account).map_err(ConnectError::Settings)?;
    let client_id = args.client_id.clone();
    let (auth, credential) = match &args.federated_token_file {
        Some(file) => (
            Auth::Workload {
                client_id: client_id.clone(),
                tenant_id: args.tenant_id.clone(),
                token_file: file.clone(),
            },
            CredentialKind::WorkloadIdentity { client_id },
        ),
        None => (
            Auth::Managed {
                client_id: client_id.clone(),
            },
            CredentialKind::ManagedIdentity { client_id },
        ),
    };
    Ok(Source {
        account: account.to_owned(),
        blob_endpoint: endpoint("https", account, "blob", "core.windows.net")?,
        queue_endpoint: endpoint("https", account, "queue", "core.windows.net")?,
        credential,
        auth,
    })
}

fn validate_account(account: &str) -> Result<(), String> {
    let ok = (3..=24).contains(&account.len())
        && account
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "account name {account:?} is not valid: 3 to 24 lowercase letters and digits"
        ))
    }
}

#[cfg(test)]
mod tests {
    use secrecy::SecretString;
    use url::Url;

    use super::*;

    #[test]
    fn resolution_order_and_debug_hides_secrets() {
        let secret = "c3VwZXJzZWNyZXRrZXk=";
        let mut args = StorageArgs {
            storage_timeout: Duration::from_secs(5),
            ..Default::default()
        };
        let r = resolve(&args).unwrap();
        assert_eq!(r.info.credential, CredentialKind::DevelopmentStorage);

        args.account = Some("prodacct".into());
        let r = resolve(&args).unwrap();
        assert_eq!(
            r.info.credential,
            CredentialKind::ManagedIdentity { client_id: None }
        );
        assert_eq!(
            r.info.queue_endpoint.as_str(),
            "https://prodacct.queue.core.windows.net/"
        );

        args.federated_token_file = Some("/var/run/token".into());
        args.client_id = Some("cid".into());
        let r = resolve(&args).unwrap();
        assert_eq!(
            r.info.credential,
            CredentialKind::WorkloadIdentity {
                client_id: Some("cid".into())
            }
        );

        args.connection_string = Some(SecretString::from(format!(
            "AccountName=keyed;AccountKey={secret}"
        )));
        let r = resolve(&args).unwrap();
        assert_eq!(r.info.account, "keyed");
        for text in [
            format!("{args:?}"),
            format!("{r:?}"),
            r.info.to_string(),
            format!("{:?}", r.info),
        ] {
            assert!(!text.contains(secret), "secret leaked in {text}");
        }
    }

    #[test]
    fn storage_timeout_must_allow_a_request() {
        let args = StorageArgs {
            storage_timeout: Duration::from_millis(10),
            ..Default::default()
        };
        let err = resolve(&args).unwrap_err().to_string();
        assert!(err.contains("--storage-timeout 10ms is too short"), "{err}");
    }

    #[test]
    fn tokens_refuse_plain_http() {
        let args = StorageArgs {
            account: Some("acct1".into()),
            blob_endpoint: Some(Url::parse("http://127.0.0.1:1/acct1").unwrap()),
            ..Default::default()
        };
        let err = resolve(&args).unwrap_err().to_string();
        assert!(err.contains("https"), "{err}");
    }
}
