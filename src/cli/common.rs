//! Helpers shared by the subcommands that talk to Azure Storage (`submit`, the queue tools,
//! the blob tools): the async runtime, the connection, and turning a `StorageError` into the
//! one clear line the user sees.

use anyhow::Context;

use crate::storage::{Connection, StorageArgs, StorageError, connect};

/// A current-thread runtime: the operator tools make one request at a time.
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Connects with the user's storage settings and logs which account, endpoints and
/// credential kind are used (never a secret).
pub(crate) async fn connected(storage: &StorageArgs) -> anyhow::Result<Connection> {
    let conn = connect(storage).await?;
    tracing::info!(connection = %conn.info, "connected");
    Ok(conn)
}

/// Maps a failed storage call to its explanation: what failed, against which account,
/// endpoint and credential kind, and what to check.
pub(crate) fn explained(conn: &Connection) -> impl Fn(StorageError) -> anyhow::Error + '_ {
    move |e| anyhow::anyhow!(conn.info.explain(&e))
}
