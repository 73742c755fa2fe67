//! Credential types: [`Auth`] carries the secret `azure::build` signs with; [`CredentialKind`]
//! is its secret-free description for logs and error messages.

use std::fmt;
use std::path::PathBuf;

use secrecy::SecretString;

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
