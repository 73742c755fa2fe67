//! Connection settings, pure and offline: the `StorageArgs` flags every Azure-facing
//! subcommand flattens, the credential types, the connection-string parser and resolver, and
//! the text that explains a connection to the user. `azure::connect` turns them into clients;
//! nothing here imports the adapter (or the storage traits), so the two do not form a cycle.
//!
//! Resolution order: a connection string (`AZURE_STORAGE_CONNECTION_STRING`), else an account
//! name (`AZURE_STORAGE_ACCOUNT`) with Entra ID tokens (workload identity when
//! `AZURE_FEDERATED_TOKEN_FILE` is set, else managed identity), else the local emulator
//! (`UseDevelopmentStorage=true`). Nothing here prints or stores a secret outside a
//! [`SecretString`](secrecy::SecretString).

mod args;
mod connection_string;
mod credential;
mod error;
mod info;
mod resolve;

pub use args::StorageArgs;
pub(crate) use connection_string::parse_connection_string;
pub use connection_string::{DEV_ACCOUNT, DEV_KEY};
pub(crate) use credential::Auth;
pub use credential::CredentialKind;
pub use error::ConnectError;
pub use info::ConnectionInfo;
pub(crate) use resolve::{Resolved, resolve};
