//! Storage seams: the small traits the rest of rollq uses for Azure Storage Queues and Blobs.
//!
//! `azure/` implements them on the official Azure SDK (the only folder that imports it);
//! `memory.rs` is an in-memory fake for fast unit tests. Callers see `StorageError` only.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures::Stream;

pub mod error;
// In-memory fakes for the library's own unit tests; never compiled into the shipped crate.
#[cfg(test)]
pub mod memory;
pub mod op;
pub use error::{ErrorKind, ReceiptFailure, StorageError};
pub use op::{Op, Service};

pub mod azure;
pub mod connection;
pub mod names;
pub use azure::{Connection, connect};
pub use connection::{ConnectError, ConnectionInfo, CredentialKind, StorageArgs};
pub use names::{poison_queue_name, validate_container_name, validate_queue_name};

// === queue types ===

/// Opaque id of a queue message.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MessageId(pub String);

/// Proof of the current lease on a message; every visibility update returns a new one and
/// only the newest deletes or updates the message.
#[derive(Clone, PartialEq, Eq)]
pub struct PopReceipt(pub String);

impl fmt::Debug for PopReceipt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PopReceipt(..)")
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A message received with a visibility timeout: invisible to others until it lapses.
#[derive(Clone, Debug)]
pub struct Received {
    pub id: MessageId,
    pub pop_receipt: PopReceipt,
    /// The message text exactly as stored (no decoding applied).
    pub text: String,
    /// How many times the message has been received, this time included.
    pub dequeue_count: u64,
    pub inserted_on: Option<SystemTime>,
    pub next_visible_on: Option<SystemTime>,
}

/// A message seen by peek (no lease taken).
#[derive(Clone, Debug)]
pub struct Peeked {
    pub id: MessageId,
    pub text: String,
    pub dequeue_count: u64,
    pub inserted_on: Option<SystemTime>,
}

/// One Azure Storage queue.
#[async_trait]
pub trait Queue: Send + Sync + fmt::Debug {
    /// The queue's name.
    fn name(&self) -> &str;
    /// Creates the queue if it does not exist (an existing queue is success).
    async fn create_if_missing(&self) -> Result<(), StorageError>;
    /// Sends a message that never expires (time-to-live -1).
    async fn send(&self, text: &str) -> Result<MessageId, StorageError>;
    /// Receives up to `max` (1..=32) messages, each invisible for `visibility`.
    async fn receive(&self, max: u8, visibility: Duration) -> Result<Vec<Received>, StorageError>;
    /// Sets a message's visibility timeout (0 releases it at once), optionally rewriting its
    /// text; returns the new pop receipt. A stale receipt gives `ErrorKind::LeaseLost`.
    async fn update(
        &self,
        id: &MessageId,
        receipt: &PopReceipt,
        visibility: Duration,
        new_text: Option<&str>,
    ) -> Result<PopReceipt, StorageError>;
    /// [`Queue::update`] to extend a lease while work runs (no new text): the same request,
    /// counted as `renew` in `rollq_storage_requests_total` like the error counter's label.
    async fn renew(
        &self,
        id: &MessageId,
        receipt: &PopReceipt,
        visibility: Duration,
    ) -> Result<PopReceipt, StorageError> {
        self.update(id, receipt, visibility, None).await
    }
    /// Deletes a message; a stale receipt gives `ErrorKind::LeaseLost`.
    async fn delete(&self, id: &MessageId, receipt: &PopReceipt) -> Result<(), StorageError>;
    /// Peeks up to `max` (1..=32) visible messages without leasing them.
    async fn peek(&self, max: u8) -> Result<Vec<Peeked>, StorageError>;
    /// The approximate message count (visible and invisible).
    async fn approximate_count(&self) -> Result<u64, StorageError>;
}

/// Makes queue handles by name (the main queue and its `-poison` twin share an account).
pub trait QueueService: Send + Sync + fmt::Debug {
    fn queue(&self, name: &str) -> Arc<dyn Queue>;
}

// === blob types ===

/// A blob's location: container and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobPath {
    pub container: String,
    pub name: String,
}

impl BlobPath {
    pub fn new(container: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            container: container.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for BlobPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.container, self.name)
    }
}

/// An entity tag, quotes included as the service sends it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ETag(pub String);

impl fmt::Display for ETag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What `properties` returns.
#[derive(Clone, Debug)]
pub struct BlobProperties {
    pub etag: ETag,
    /// The blob's full size in bytes.
    pub size: u64,
    pub content_md5: Option<[u8; 16]>,
    pub metadata: Vec<(String, String)>,
}

/// One entry of a listing.
#[derive(Clone, Debug)]
pub struct BlobItem {
    pub name: String,
    pub size: u64,
    pub etag: ETag,
}

/// A precondition on a write.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Condition {
    /// Write unconditionally (overwrite).
    #[default]
    None,
    /// Only if the blob does not exist (If-None-Match: *); an existing blob gives `Conflict`.
    IfNotExists,
    /// Only if the blob's current ETag matches; otherwise `PreconditionFailed`.
    IfMatch(ETag),
}

/// Options for a write.
#[derive(Clone, Debug, Default)]
pub struct PutOptions {
    pub condition: Condition,
    pub content_type: Option<String>,
    pub metadata: Vec<(String, String)>,
}

/// A stream of blob bytes; each item is at most one download partition.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, StorageError>> + Send>>;

/// An upload in progress: blocks are staged as they are produced and become visible only
/// at `commit`. Dropping it without committing leaves nothing visible (Azure collects
/// uncommitted blocks after a week).
#[async_trait]
pub trait BlockUpload: Send {
    /// Stages one block (up to 4000 MiB; rollq uses a few MiB).
    async fn stage(&mut self, block: Bytes) -> Result<(), StorageError>;
    /// Records the whole blob's MD5 to store at commit (Azure computes it only for single
    /// puts). Optional: the default ignores it, which is right for stores that compute it.
    fn set_content_md5(&mut self, _md5: [u8; 16]) {}
    /// Commits every staged block, in order, under the upload's options; returns the new ETag.
    async fn commit(self: Box<Self>) -> Result<ETag, StorageError>;
    /// Commits the staged blocks under `condition` instead of the upload's own, keeping the
    /// upload for another try: a commit refused by its condition leaves the blocks staged, so
    /// the worker can decide about the existing blob and commit again without restaging.
    async fn commit_with(&mut self, condition: Condition) -> Result<ETag, StorageError>;
}

/// The first response of a download: the blob's properties (from that GET's own headers)
/// and its bytes, every later range pinned to `properties.etag`.
pub struct Download {
    /// ETag, full size, Content-MD5 of the whole blob and metadata, as of this read.
    pub properties: BlobProperties,
    pub stream: ByteStream,
}

impl fmt::Debug for Download {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Download")
            .field("properties", &self.properties)
            .finish_non_exhaustive()
    }
}

/// Download tuning: memory held is bounded by about `2 × parallel × partition_bytes`.
#[derive(Clone, Copy, Debug)]
pub struct ReadOptions {
    pub partition_bytes: usize,
    pub parallel: usize,
}

impl Default for ReadOptions {
    fn default() -> Self {
        Self {
            partition_bytes: 4 << 20,
            parallel: 2,
        }
    }
}

/// Azure Blob Storage, one account.
#[async_trait]
pub trait BlobStore: Send + Sync + fmt::Debug {
    /// Creates a container if it does not exist (an existing one is success).
    async fn create_container_if_missing(&self, container: &str) -> Result<(), StorageError>;
    /// Whether a container exists (used by start-up checks).
    async fn container_exists(&self, container: &str) -> Result<bool, StorageError>;
    /// A blob's properties; a missing blob gives `ErrorKind::NotFound`.
    async fn properties(&self, path: &BlobPath) -> Result<BlobProperties, StorageError>;
    /// Streams a blob. With `if_match`, a blob changed since gives `PreconditionFailed`
    /// (at open or mid-stream).
    async fn open_read(
        &self,
        path: &BlobPath,
        if_match: Option<&ETag>,
        opts: ReadOptions,
    ) -> Result<ByteStream, StorageError>;
    /// Streams a blob and returns its properties from the first GET's headers: one request
    /// where `properties` + `open_read` take two. Later ranges are pinned to the first
    /// response's ETag. The default makes the two calls (for wrappers and stores that cannot
    /// do better); the Azure adapter and the fake override it.
    async fn download(&self, path: &BlobPath, opts: ReadOptions) -> Result<Download, StorageError> {
        let properties = self.properties(path).await?;
        let stream = self.open_read(path, Some(&properties.etag), opts).await?;
        Ok(Download { properties, stream })
    }
    /// Writes a small blob in one request.
    async fn put(
        &self,
        path: &BlobPath,
        body: Bytes,
        opts: PutOptions,
    ) -> Result<ETag, StorageError>;
    /// Starts a staged-block upload, for outputs and inputs too large for one request.
    async fn start_upload(
        &self,
        path: &BlobPath,
        opts: PutOptions,
    ) -> Result<Box<dyn BlockUpload>, StorageError>;
    /// Lists blobs in a container whose names start with `prefix`.
    async fn list(&self, container: &str, prefix: &str) -> Result<Vec<BlobItem>, StorageError>;
    /// Deletes a blob (a missing blob gives `NotFound`).
    async fn delete(&self, path: &BlobPath) -> Result<(), StorageError>;
}
