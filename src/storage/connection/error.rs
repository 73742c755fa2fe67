//! [`ConnectError`]: why storage settings could not become a connection. Returned by the
//! parser and resolver here and by `azure::build`; the CLI prints it as is.

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
