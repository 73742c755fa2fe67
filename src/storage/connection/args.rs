//! [`StorageArgs`]: the clap flags (and their environment variables) that every Azure-facing
//! subcommand flattens; `resolve` turns them into settings.

use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;
use url::Url;

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
