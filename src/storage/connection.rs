//! Connection settings: the `StorageArgs` flags every Azure-facing subcommand flattens, the
//! connection-string parser, and [`connect`], which turns them into queue and blob handles.
//!
//! Resolution order: a connection string (`AZURE_STORAGE_CONNECTION_STRING`), else an account
//! name (`AZURE_STORAGE_ACCOUNT`) with Entra ID tokens (workload identity when
//! `AZURE_FEDERATED_TOKEN_FILE` is set, else managed identity), else the local emulator
//! (`UseDevelopmentStorage=true`). Nothing here prints or stores a secret outside a
//! [`SecretString`].

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use url::Url;

use super::{BlobStore, ErrorKind, QueueService, StorageError};

/// The emulator's well-known account (public, documented by Microsoft; not a secret).
pub const DEV_ACCOUNT: &str = "devstoreaccount1";
/// The emulator's well-known key (public, documented by Microsoft; not a secret).
pub const DEV_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
const DEV_BLOB: &str = "http://127.0.0.1:10000/devstoreaccount1";
const DEV_QUEUE: &str = "http://127.0.0.1:10001/devstoreaccount1";

/// Storage connection flags, flattened into every subcommand that talks to Azure.
#[derive(Clone, Debug, clap::Args)]
pub struct StorageArgs {
    /// Azure Storage connection string (full Azure syntax, or `UseDevelopmentStorage=true`).
    /// A secret: never logged. Takes precedence over --account.
    #[arg(
        long,
        env = "AZURE_STORAGE_CONNECTION_STRING",
        hide_env_values = true,
        value_parser = parse_secret
    )]
    pub connection_string: Option<SecretString>,
    /// Storage account name, authenticated with Entra ID (workload or managed identity).
    #[arg(long, env = "AZURE_STORAGE_ACCOUNT")]
    pub account: Option<String>,
    /// Blob service endpoint override (e.g. a private endpoint, or Azurite's URL).
    #[arg(long, env = "ROLLQ_BLOB_ENDPOINT")]
    pub blob_endpoint: Option<Url>,
    /// Queue service endpoint override.
    #[arg(long, env = "ROLLQ_QUEUE_ENDPOINT")]
    pub queue_endpoint: Option<Url>,
    /// Client id of a user-assigned managed identity, or of the workload identity.
    #[arg(long, env = "AZURE_CLIENT_ID")]
    pub client_id: Option<String>,
    /// Tenant id for workload identity (AKS injects it).
    #[arg(long, env = "AZURE_TENANT_ID")]
    pub tenant_id: Option<String>,
    /// Projected service-account token; when set, workload identity is used (AKS injects it).
    #[arg(long, env = "AZURE_FEDERATED_TOKEN_FILE")]
    pub federated_token_file: Option<PathBuf>,
    /// Upper bound on one storage call, retries included: a dead endpoint fails this fast.
    #[arg(long, env = "ROLLQ_STORAGE_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub storage_timeout: Duration,
}

impl Default for StorageArgs {
    /// Nothing configured (the emulator), with the same call timeout as the flag's default.
    fn default() -> Self {
        Self {
            connection_string: None,
            account: None,
            blob_endpoint: None,
            queue_endpoint: None,
            client_id: None,
            tenant_id: None,
            federated_token_file: None,
            storage_timeout: Duration::from_secs(30),
        }
    }
}

fn parse_secret(s: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(s.to_owned()))
}

/// How requests are authorised (the secret-free description lives in [`CredentialKind`]).
#[derive(Clone)]
pub(crate) enum Auth {
    /// Shared Key signing with a base64 account key.
    SharedKey { key: SecretString },
    /// A SAS token appended to every request's query.
    Sas { token: SecretString },
    /// Workload identity (federated token file).
    Workload {
        client_id: Option<String>,
        tenant_id: Option<String>,
        token_file: PathBuf,
    },
    /// Managed identity (system-assigned, or user-assigned by client id).
    Managed { client_id: Option<String> },
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Auth::SharedKey { .. } => "SharedKey(..)",
            Auth::Sas { .. } => "Sas(..)",
            Auth::Workload { .. } => "Workload",
            Auth::Managed { .. } => "Managed",
        })
    }
}

/// The credential kind in use, for logs and error messages (never contains a secret).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CredentialKind {
    /// The emulator's well-known account key.
    DevelopmentStorage,
    /// An account key from a connection string.
    AccountKey,
    /// A shared access signature from a connection string.
    SharedAccessSignature,
    /// Entra ID via AKS workload identity.
    WorkloadIdentity { client_id: Option<String> },
    /// Entra ID via managed identity (`client_id` selects a user-assigned one).
    ManagedIdentity { client_id: Option<String> },
}

impl fmt::Display for CredentialKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CredentialKind::DevelopmentStorage => {
                f.write_str("emulator account key (UseDevelopmentStorage=true)")
            }
            CredentialKind::AccountKey => f.write_str("account key (connection string)"),
            CredentialKind::SharedAccessSignature => f.write_str("SAS token (connection string)"),
            CredentialKind::WorkloadIdentity { client_id } => match client_id {
                Some(id) => write!(f, "workload identity (client id {id})"),
                None => f.write_str("workload identity"),
            },
            CredentialKind::ManagedIdentity { client_id } => match client_id {
                Some(id) => write!(f, "user-assigned managed identity (client id {id})"),
                None => f.write_str("system-assigned managed identity"),
            },
        }
    }
}

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
fn display_url(u: &Url) -> String {
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
        };
        format!(
            "{err}; account {}, endpoint {endpoint}, credential: {}; {hint}",
            self.account, self.credential
        )
    }
}

/// Why settings could not become a connection; the text never contains a secret.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The connection string is malformed or incomplete.
    #[error("invalid storage connection string: {0}")]
    ConnectionString(String),
    /// An endpoint or account setting is unusable.
    #[error("invalid storage settings: {0}")]
    Settings(String),
    /// The SDK refused to build a client or credential.
    #[error("cannot set up the storage client: {0}")]
    Client(String),
}

/// The parsed, resolved settings: where to connect and how to authorise.
#[derive(Clone, Debug)]
pub(crate) struct Resolved {
    pub info: ConnectionInfo,
    pub auth: Auth,
    pub timeout: Duration,
}

/// A ready connection: queue and blob handles for one account, plus a loggable description.
#[derive(Clone, Debug)]
pub struct Connection {
    pub queues: Arc<dyn QueueService>,
    pub blobs: Arc<dyn BlobStore>,
    pub info: ConnectionInfo,
}

/// Resolves `args` (connection string, account, or the emulator default) and builds the clients.
pub async fn connect(args: &StorageArgs) -> Result<Connection, ConnectError> {
    let resolved = resolve(args)?;
    super::azure::build(resolved)
}

pub(crate) fn resolve(args: &StorageArgs) -> Result<Resolved, ConnectError> {
    let timeout = args.storage_timeout;
    if timeout < Duration::from_secs(1) {
        return Err(ConnectError::Settings(format!(
            "--storage-timeout {} is too short: give at least 1s",
            humantime::format_duration(timeout)
        )));
    }
    if let Some(cs) = &args.connection_string {
        let parsed = parse_connection_string(cs.expose_secret())?;
        let blob = args.blob_endpoint.clone().unwrap_or(parsed.blob_endpoint);
        let queue = args.queue_endpoint.clone().unwrap_or(parsed.queue_endpoint);
        return Ok(Resolved {
            info: ConnectionInfo {
                account: parsed.account,
                blob_endpoint: blob,
                queue_endpoint: queue,
                credential: parsed.credential,
            },
            auth: parsed.auth,
            timeout,
        });
    }
    if let Some(account) = &args.account {
        validate_account(account).map_err(ConnectError::Settings)?;
        let blob = match &args.blob_endpoint {
            Some(u) => u.clone(),
            None => endpoint("https", account, "blob", "core.windows.net")?,
        };
        let queue = match &args.queue_endpoint {
            Some(u) => u.clone(),
            None => endpoint("https", account, "queue", "core.windows.net")?,
        };
        let (auth, credential) = match &args.federated_token_file {
            Some(file) => (
                Auth::Workload {
                    client_id: args.client_id.clone(),
                    tenant_id: args.tenant_id.clone(),
                    token_file: file.clone(),
                },
                CredentialKind::WorkloadIdentity {
                    client_id: args.client_id.clone(),
                },
            ),
            None => (
                Auth::Managed {
                    client_id: args.client_id.clone(),
                },
                CredentialKind::ManagedIdentity {
                    client_id: args.client_id.clone(),
                },
            ),
        };
        for u in [&blob, &queue] {
            if u.scheme() != "https" {
                return Err(ConnectError::Settings(format!(
                    "{} uses {}: Entra ID tokens are only sent over https",
                    display_url(u),
                    u.scheme()
                )));
            }
        }
        return Ok(Resolved {
            info: ConnectionInfo {
                account: account.clone(),
                blob_endpoint: blob,
                queue_endpoint: queue,
                credential,
            },
            auth,
            timeout,
        });
    }
    let parsed = parse_connection_string("UseDevelopmentStorage=true")?;
    Ok(Resolved {
        info: ConnectionInfo {
            account: parsed.account,
            blob_endpoint: args.blob_endpoint.clone().unwrap_or(parsed.blob_endpoint),
            queue_endpoint: args.queue_endpoint.clone().unwrap_or(parsed.queue_endpoint),
            credential: parsed.credential,
        },
        auth: parsed.auth,
        timeout,
    })
}

/// What a connection string says.
#[derive(Clone, Debug)]
pub(crate) struct ParsedConnectionString {
    pub account: String,
    pub blob_endpoint: Url,
    pub queue_endpoint: Url,
    pub credential: CredentialKind,
    pub auth: Auth,
}

fn endpoint(scheme: &str, account: &str, service: &str, suffix: &str) -> Result<Url, ConnectError> {
    Url::parse(&format!("{scheme}://{account}.{service}.{suffix}")).map_err(|e| {
        ConnectError::Settings(format!(
            "cannot form the {service} endpoint for account {account} with suffix {suffix}: {e}"
        ))
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

/// Parses Azure's connection-string syntax: `Key=Value` pairs separated by `;`, keys matched
/// case-insensitively, values kept verbatim (keys and SAS tokens contain `=`).
pub(crate) fn parse_connection_string(s: &str) -> Result<ParsedConnectionString, ConnectError> {
    let bad = |m: String| ConnectError::ConnectionString(m);
    let mut protocol = None;
    let mut account = None;
    let mut key = None;
    let mut sas = None;
    let mut suffix = None;
    let mut blob = None;
    let mut queue = None;
    let mut dev = false;
    // Only keys are ever echoed back in an error: any value may be a secret.
    for (index, part) in s
        .split(';')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .enumerate()
    {
        let Some((k, v)) = part.split_once('=') else {
            return Err(bad(format!(
                "segment {} is not Key=Value (segments are separated by ';')",
                index + 1
            )));
        };
        let v = v.trim();
        match k.trim().to_ascii_lowercase().as_str() {
            "usedevelopmentstorage" => {
                if !v.eq_ignore_ascii_case("true") {
                    return Err(bad("UseDevelopmentStorage must be true".to_owned()));
                }
                dev = true;
            }
            "defaultendpointsprotocol" => {
                let p = v.to_ascii_lowercase();
                if p != "https" && p != "http" {
                    return Err(bad(
                        "DefaultEndpointsProtocol must be https or http".to_owned()
                    ));
                }
                protocol = Some(p);
            }
            "accountname" => account = Some(v.to_owned()),
            "accountkey" => key = Some(v.to_owned()),
            "sharedaccesssignature" => sas = Some(v.trim_start_matches('?').to_owned()),
            "endpointsuffix" => suffix = Some(v.to_owned()),
            "blobendpoint" => {
                blob = Some(
                    Url::parse(v).map_err(|e| bad(format!("BlobEndpoint is not a URL ({e})")))?,
                )
            }
            "queueendpoint" => {
                queue = Some(
                    Url::parse(v).map_err(|e| bad(format!("QueueEndpoint is not a URL: {e}")))?,
                )
            }
            // Portal strings carry these; rollq does not use the table or file services.
            "tableendpoint"
            | "fileendpoint"
            | "blobsecondaryendpoint"
            | "queuesecondaryendpoint"
            | "tablesecondaryendpoint"
            | "filesecondaryendpoint"
            | "developmentstorageproxyuri" => {}
            other => {
                return Err(bad(format!(
                    "unknown key {other:?} (expected DefaultEndpointsProtocol, AccountName, \
                     AccountKey, EndpointSuffix, BlobEndpoint, QueueEndpoint, \
                     SharedAccessSignature or UseDevelopmentStorage)"
                )));
            }
        }
    }
    if dev {
        return Ok(ParsedConnectionString {
            account: DEV_ACCOUNT.to_owned(),
            blob_endpoint: blob.unwrap_or_else(|| Url::parse(DEV_BLOB).expect("constant URL")),
            queue_endpoint: queue.unwrap_or_else(|| Url::parse(DEV_QUEUE).expect("constant URL")),
            credential: CredentialKind::DevelopmentStorage,
            auth: Auth::SharedKey {
                key: SecretString::from(DEV_KEY),
            },
        });
    }
    if key.is_some() && sas.is_some() {
        return Err(bad(
            "both AccountKey and SharedAccessSignature are set: keep one".to_owned(),
        ));
    }
    let protocol = protocol.unwrap_or_else(|| "https".to_owned());
    let suffix = suffix.unwrap_or_else(|| "core.windows.net".to_owned());
    let blob = match (blob, &account) {
        (Some(u), _) => u,
        (None, Some(a)) => endpoint(&protocol, a, "blob", &suffix)?,
        (None, None) => {
            return Err(bad("neither AccountName nor BlobEndpoint is set".to_owned()));
        }
    };
    let queue = match (queue, &account) {
        (Some(u), _) => u,
        (None, Some(a)) => endpoint(&protocol, a, "queue", &suffix)?,
        (None, None) => {
            return Err(bad(
                "neither AccountName nor QueueEndpoint is set".to_owned()
            ));
        }
    };
    let account = match account {
        Some(a) => a,
        None => account_from_endpoint(&blob).ok_or_else(|| {
            bad("AccountName is missing and cannot be read from BlobEndpoint".to_owned())
        })?,
    };
    let (auth, credential) = match (key, sas) {
        (Some(k), None) => {
            use base64::Engine as _;
            if base64::engine::general_purpose::STANDARD
                .decode(&k)
                .is_err()
            {
                return Err(bad("AccountKey is not valid base64".to_owned()));
            }
            (
                Auth::SharedKey {
                    key: SecretString::from(k),
                },
                CredentialKind::AccountKey,
            )
        }
        (None, Some(t)) => {
            if !t.contains("sig=") {
                return Err(bad("SharedAccessSignature has no sig= parameter".to_owned()));
            }
            (
                Auth::Sas {
                    token: SecretString::from(t),
                },
                CredentialKind::SharedAccessSignature,
            )
        }
        _ => {
            return Err(bad(
                "no credential: set AccountKey or SharedAccessSignature (or use \
                 AZURE_STORAGE_ACCOUNT with an Entra ID identity instead)"
                    .to_owned(),
            ));
        }
    };
    Ok(ParsedConnectionString {
        account,
        blob_endpoint: blob,
        queue_endpoint: queue,
        credential,
        auth,
    })
}

/// `https://acct.blob.core.windows.net` → `acct`; path-style `http://host:port/acct` → `acct`.
fn account_from_endpoint(u: &Url) -> Option<String> {
    let host = u.host_str()?;
    let is_ip = host.parse::<std::net::IpAddr>().is_ok() || host == "localhost";
    if is_ip {
        u.path_segments()?
            .find(|s| !s.is_empty())
            .map(str::to_owned)
    } else {
        host.split('.').next().map(str::to_owned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "c2VjcmV0LWtleS1ieXRlcw==";

    #[test]
    fn full_azure_syntax() {
        let cs = format!(
            "DefaultEndpointsProtocol=https;AccountName=acme;AccountKey={KEY};EndpointSuffix=core.chinacloudapi.cn"
        );
        let p = parse_connection_string(&cs).unwrap();
        assert_eq!(p.account, "acme");
        assert_eq!(
            p.blob_endpoint.as_str(),
            "https://acme.blob.core.chinacloudapi.cn/"
        );
        assert_eq!(
            p.queue_endpoint.as_str(),
            "https://acme.queue.core.chinacloudapi.cn/"
        );
        assert_eq!(p.credential, CredentialKind::AccountKey);
    }

    #[test]
    fn explicit_endpoints_and_sas() {
        let cs = "BlobEndpoint=https://x.example/b;QueueEndpoint=https://q.example/;SharedAccessSignature=?sv=2022-11-02&ss=bq&sig=abc%2B%3D;TableEndpoint=https://t/";
        let p = parse_connection_string(cs).unwrap();
        assert_eq!(p.blob_endpoint.as_str(), "https://x.example/b");
        assert_eq!(p.account, "x");
        assert_eq!(p.credential, CredentialKind::SharedAccessSignature);
        match p.auth {
            Auth::Sas { token } => {
                assert_eq!(token.expose_secret(), "sv=2022-11-02&ss=bq&sig=abc%2B%3D")
            }
            other => panic!("expected SAS, got {other:?}"),
        }
    }

    #[test]
    fn development_storage() {
        let p = parse_connection_string("UseDevelopmentStorage=true").unwrap();
        assert_eq!(p.account, DEV_ACCOUNT);
        assert_eq!(p.blob_endpoint.as_str(), DEV_BLOB);
        assert_eq!(p.queue_endpoint.as_str(), DEV_QUEUE);
        assert_eq!(p.credential, CredentialKind::DevelopmentStorage);
    }

    #[test]
    fn emulator_style_path_account() {
        let cs = format!(
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={KEY};BlobEndpoint=http://127.0.0.1:4000/devstoreaccount1;QueueEndpoint=http://127.0.0.1:4001/devstoreaccount1;"
        );
        let p = parse_connection_string(&cs).unwrap();
        assert_eq!(p.queue_endpoint.port(), Some(4001));
        assert_eq!(
            account_from_endpoint(&p.blob_endpoint).as_deref(),
            Some("devstoreaccount1")
        );
    }

    #[test]
    fn errors_are_clear_and_secret_free() {
        let secret = "c3VwZXJzZWNyZXRrZXk=";
        let cases = [
            format!("AccountName=a1b;AccountKey={secret};Bogus=1"),
            format!("AccountName=a1b;{secret}"),
            format!("AccountName=a1b;AccountKey={secret};SharedAccessSignature=sig={secret}"),
            "AccountName=a1b".to_owned(),
            format!("AccountKey={secret}"),
            "AccountName=a1b;AccountKey=not base64!".to_owned(),
            format!("UseDevelopmentStorage={secret}x"),
        ];
        for cs in cases {
            let err = parse_connection_string(&cs).unwrap_err().to_string();
            assert!(!err.contains(secret), "secret leaked in {err:?}");
            assert!(
                err.starts_with("invalid storage connection string: "),
                "{err}"
            );
        }
        let err = parse_connection_string("AccountName=a1b")
            .unwrap_err()
            .to_string();
        assert!(err.contains("no credential"), "{err}");
    }

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
